"""Width-pruning criteria as a registry: what each one needs, how it selects, what keys its scores.

Every width criterion is one `WidthCriterion` in `WIDTH_CRITERIA`, registered where its scorer
lives (`width_scores.py` for the built-in ones). Nothing else in the harness compares criterion
names: validation lists the registry, the scorer is called through it, selection asks
`joint_selection`, surgery asks `compensates_bias`, and the importance cache key is
`cache_fields(cfg)`.

To add a criterion, write a scorer that fills `ctx.out.attn[layer]` (one score per attention
unit) and `ctx.out.mlp[layer]` (one per MLP channel) for every layer in `ctx.layers` and kind in
`ctx.kinds` (see `width_scores.ScoringContext`), then register it:

    register(WidthCriterion("mine", my_scorer, needs=frozenset({"gradients"}),
                            key_fields=("my_option",)))

`key_fields` names every config field beyond `COMMON_KEY_FIELDS` that its scores depend on, so
changing that option can never reuse stale cached scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

NEEDS = ("gradients", "fisher", "activations", "losses")
# Config fields every width criterion's scores depend on (the importance cache key).
COMMON_KEY_FIELDS = ("criterion", "reduction", "attn_unit", "layer_start", "layer_end",
                     "prune_attn", "prune_mlp")


@dataclass(frozen=True)
class WidthCriterion:
    """One width criterion.

    needs: what scoring computes from the calibration batch: `gradients` (one backward over the
        batch), `fisher` (one backward per sample), `activations` (statistics of the output
        projections' inputs), `losses` (forward passes of the model with units removed). Any
        need means calibration ids are required.
    joint_selection: with scope=global, heads and channels compete in one ranking of per-layer
        standardised scores (FLAP's search) instead of two separate rankings.
    compensates_bias: removed inputs' calibration means are folded into the output projection's
        bias (FLAP); the run can still switch it off with `flap_bias_compensation=false`.
    key_fields: config fields beyond COMMON_KEY_FIELDS that its scores depend on.
    gqa_foldable: scores are sums over q/o slices that LLM-Pruner's alignment code can fold onto
        KV channels (`prune.gqa_fold=llm_pruner`; see width_scores).
    scores_mlp: it can score MLP channels itself; if not (loss), `prune.mlp_criterion` (default
        taylor) scores them.
    """

    name: str
    scorer: Callable[..., None]
    needs: frozenset[str] = frozenset()
    joint_selection: bool = False
    compensates_bias: bool = False
    key_fields: tuple[str, ...] = ()
    gqa_foldable: bool = False
    scores_mlp: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"criterion {self.name!r} needs unknown {sorted(unknown)}; "
                             f"choose from {', '.join(NEEDS)}")

    @property
    def needs_calibration(self) -> bool:
        return bool(self.needs)


WIDTH_CRITERIA: dict[str, WidthCriterion] = {}


def register(criterion: WidthCriterion) -> WidthCriterion:
    if criterion.name in WIDTH_CRITERIA:
        raise ValueError(f"width criterion {criterion.name!r} is registered twice")
    WIDTH_CRITERIA[criterion.name] = criterion
    return criterion


def names() -> tuple[str, ...]:
    """Registered criteria, in registration order."""
    _load_builtin()
    return tuple(WIDTH_CRITERIA)


def get(name: str) -> WidthCriterion:
    _load_builtin()
    if name not in WIDTH_CRITERIA:
        raise ValueError(f"width.criterion={name!r} is unknown; choose from {', '.join(names())}")
    return WIDTH_CRITERIA[name]


def cache_fields(cfg) -> dict:
    """The config fields that determine a width criterion's scores (never the size), with the
    GQA fold and the MLP criterion where they apply (see WidthPruneConfig.key_fields)."""
    crit = get(cfg.criterion)
    fields = COMMON_KEY_FIELDS + crit.key_fields
    out = {"method": "width", **{k: getattr(cfg, k) for k in fields}}
    keyed = cfg.key_fields()
    out.update({k: keyed[k] for k in ("gqa_fold", "mlp_criterion") if k in keyed})
    return out


def mlp_criterion(cfg) -> str:
    """The criterion that scores MLP channels: `mlp_criterion`, else the criterion itself, else
    taylor (for criteria that score attention units only)."""
    if cfg.mlp_criterion is not None:
        return cfg.mlp_criterion
    return cfg.criterion if get(cfg.criterion).scores_mlp else "taylor"


def mlp_choices() -> tuple[str, ...]:
    """Criteria that can score MLP channels on their own (no joint search, no bias folding)."""
    return tuple(n for n in names() if (c := get(n)).scores_mlp and not c.joint_selection
                 and not c.compensates_bias)


def compensates(cfg) -> bool:
    """Whether pruning with `cfg` folds removed inputs' means into output biases."""
    return get(cfg.criterion).compensates_bias and cfg.flap_bias_compensation


def _load_builtin() -> None:
    import harness.pruning.width_scores  # noqa: F401 - registers the built-in criteria

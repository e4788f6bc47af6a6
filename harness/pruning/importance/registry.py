"""Importance criteria as registries: what each needs, how it selects, which fields key its scores.

Every depth criterion is one `DepthCriterion` in `DEPTH_CRITERIA`, every width criterion one
`WidthCriterion` in `WIDTH_CRITERIA`; the built-in ones register in `depth.py` and `width.py`
next to their scorers. Nothing else in the harness compares criterion names: validation lists
the registries, scorers are called through them, selection asks `window` / `joint_selection`,
surgery asks `compensates_bias`, and the importance key is built from `key_fields`.

Adding a criterion: one module (in this folder, or any module named in HARNESS_PLUGINS) with a
scorer, registered here:

    register_depth(DepthCriterion("mine", my_scorer, needs=frozenset({"activations"})))
    register_width(WidthCriterion("mine", my_scorer, key_fields=("my_option",)))

A depth scorer takes a `DepthContext` and returns {block: score} (higher = keep); a width
scorer fills `ctx.out.attn[layer]` / `ctx.out.mlp[layer]` (see width.ScoringContext).
`key_fields` names every prune config field beyond the common ones its scores depend on, so
changing that option can never reuse stale cached scores or pruned models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.registry import Registry

NEEDS = ("gradients", "fisher", "activations", "losses")
# Config fields every criterion's scores depend on (the importance key), never the size.
DEPTH_KEY_FIELDS = ("criterion", "unit", "protect_first", "protect_last")
WIDTH_KEY_FIELDS = ("criterion", "reduction", "attn_unit", "layer_start", "layer_end",
                    "prune_attn", "prune_mlp")


def _check_needs(name: str, needs) -> None:
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"criterion {name!r} needs unknown {sorted(unknown)}; "
                         f"choose from {', '.join(NEEDS)}")


@dataclass
class DepthContext:
    """What a depth scorer gets: score every block in `candidates` for removing its `unit`."""

    model: torch.nn.Module
    calib: torch.Tensor | None  # [samples, seq] calibration ids
    candidates: list[int]
    unit: str  # block | attn | mlp
    n: int  # how many units will go (window criteria score windows of this length)
    cfg: object  # the prune config (for the criterion's own key_fields)


@dataclass(frozen=True)
class DepthCriterion:
    """One depth criterion.

    needs: what scoring computes from the calibration batch (see NEEDS); none = weights only.
    key_fields: prune config fields beyond DEPTH_KEY_FIELDS its scores depend on (random: seed).
    units: the units it can score (angular: whole blocks only).
    window: it scores window starts for removing `n` contiguous blocks (Gromov et al.), so its
        scores depend on `n`, and it cannot remove blocks one at a time (`iterative`).
    """

    name: str
    scorer: Callable[[DepthContext], dict[int, float]]
    needs: frozenset[str] = frozenset()
    key_fields: tuple[str, ...] = ()
    units: tuple[str, ...] = ("block", "attn", "mlp")
    window: bool = False

    def __post_init__(self) -> None:
        _check_needs(self.name, self.needs)


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
    key_fields: config fields beyond WIDTH_KEY_FIELDS that its scores depend on.
    gqa_foldable: scores are sums over q/o slices that LLM-Pruner's alignment code can fold onto
        KV channels (`prune.gqa_fold=llm_pruner`; see width.py).
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
        _check_needs(self.name, self.needs)

    @property
    def needs_calibration(self) -> bool:
        return bool(self.needs)


DEPTH_CRITERIA: Registry[DepthCriterion] = Registry(
    "depth criterion", "prune.criterion", builtins="harness.pruning.importance.depth")
WIDTH_CRITERIA: Registry[WidthCriterion] = Registry(
    "width criterion", "prune.criterion", builtins="harness.pruning.importance.width")
register_depth = DEPTH_CRITERIA.register
register_width = WIDTH_CRITERIA.register


# ---- width: which criteria a config uses, and what they key on -------------------------------
def mlp_criterion(cfg) -> str:
    """The criterion that scores MLP channels: `mlp_criterion`, else the criterion itself, else
    taylor (for criteria that score attention units only)."""
    if cfg.mlp_criterion is not None:
        return cfg.mlp_criterion
    return cfg.criterion if WIDTH_CRITERIA.get(cfg.criterion).scores_mlp else "taylor"


def width_criteria_used(cfg) -> list[WidthCriterion]:
    """The criteria whose scores `cfg` selects by: its own, and the MLP one if another."""
    crit = WIDTH_CRITERIA.get(cfg.criterion)
    mlp = WIDTH_CRITERIA.get(mlp_criterion(cfg)) if cfg.prune_mlp else crit
    return [crit] if mlp is crit else [crit, mlp]


def mlp_choices() -> tuple[str, ...]:
    """Criteria that can score MLP channels on their own (no joint search, no bias folding)."""
    return tuple(c.name for c in WIDTH_CRITERIA if c.scores_mlp and not c.joint_selection
                 and not c.compensates_bias)


def compensates(cfg) -> bool:
    """Whether pruning with `cfg` folds removed inputs' means into output biases."""
    return WIDTH_CRITERIA.get(cfg.criterion).compensates_bias and cfg.flap_bias_compensation

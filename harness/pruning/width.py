"""Width pruning: remove attention heads / KV groups and MLP channels, physically and in place.

`prune_width(model, cfg, calib_ids)` = `score_groups` (cacheable importance, see width_scores)
+ `select_kept` (counts from ratio.solve_counts, then ranking per layer or across layers)
+ `apply_width` (slice q/k/v rows, o columns, gate/up rows, down columns, wherever the family's
  adapter says they live; FLAP bias fold-in)
+ `record_layer_shapes` (so the saved checkpoint reloads). A sweep can call `score_groups`
once and pass the result as `scores=` for several ratios (on fresh copies of the model).

Scope `global` ranks attention units across pruned layers and MLP channels across pruned layers
(counts from the same unit ratio); with a joint-selection criterion (`flap`, see importance/registry.py)
it is FLAP's joint search over per-layer
standardised scores of both kinds, stopped where removed params best match the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from harness.keys import Keyed
from harness.models.adapters import adapter_for
from harness.models.adapters.base import head_rows
from harness.models.params import count_params
from harness.models.uneven import record_layer_shapes
from harness.pruning import ratio as R
from harness.pruning.importance import registry as criteria
from harness.pruning.importance.registry import WIDTH_CRITERIA, WIDTH_KEY_FIELDS
from harness.pruning.importance.width import REDUCTIONS, WidthScores, score_groups
from harness.pruning.methods import PruneMethod, register

ATTN_UNITS = ("q_head", "kv_group")
SCOPES = ("uniform", "global")
GQA_FOLDS = ("aligned", "llm_pruner")


@dataclass
class WidthPruneConfig(Keyed):
    """Width pruning settings; exactly one of `ratio` (of total params) or `unit_ratio`.

    `gqa_fold`: how a KV group's query and output projection members are scored on GQA models. `aligned`
    (default) scores the query heads the group's removal cuts, {g*G .. g*G+G-1}. `llm_pruner`
    is LLM-Pruner's GQA code as it is (llama3.py): q/o scores folded onto the KV channels with
    `imp.view(G, -1).sum(0)`, i.e. group g scored with heads {g, g+K, g+2K, ...} while the cut
    still removes {g*G ..}; with `unit_ratio` also its count rule (kept channels floored,
    whole KV heads from the floor of removed channels: unit_ratio 0.63 of 3 groups removes 1).
    `mlp_criterion`: what scores MLP channels (default: the criterion itself; taylor for
    `loss`, which scores attention units only).
    """

    SIZE_FIELDS: ClassVar[tuple[str, ...]] = ("ratio", "unit_ratio")
    DETERMINING = ("name", "criterion", "reduction", "attn_unit", "scope", "layer_start",
                   "layer_end", "ratio", "unit_ratio", "prune_attn", "prune_mlp", "align", "seed",
                   "flap_bias_compensation", "gqa_fold", "mlp_criterion")
    NOT_DETERMINING = ()

    name: str = "width"
    criterion: str = "taylor"
    reduction: str = "sum"
    attn_unit: str = "q_head"
    scope: str = "uniform"
    layer_start: int = 4
    layer_end: int = -2
    ratio: float | None = None
    unit_ratio: float | None = None
    prune_attn: bool = True
    prune_mlp: bool = True
    align: int = 1
    seed: int = 0
    flap_bias_compensation: bool = True
    gqa_fold: str = "aligned"
    mlp_criterion: str | None = None

    def key_fields(self) -> dict:
        """Fields that matter to some criteria only count for them: a criterion's own
        key_fields (random's seed) when it or the MLP criterion declares them, the bias
        compensation for criteria that fold biases (FLAP), the GQA fold for LLM-Pruner's
        criteria, mlp_criterion for criteria that allow another MLP criterion."""
        out = super().key_fields()
        if self.criterion not in WIDTH_CRITERIA:
            return out
        crit, used = WIDTH_CRITERIA.get(self.criterion), criteria.width_criteria_used(self)
        own = {n for c in used for n in c.key_fields}
        for name in {n for c in WIDTH_CRITERIA for n in c.key_fields} - own:
            out.pop(name, None)
        if not crit.compensates_bias:
            out.pop("flap_bias_compensation", None)
        if not crit.gqa_foldable:
            del out["gqa_fold"]
        if crit.joint_selection or crit.compensates_bias:
            del out["mlp_criterion"]
        return out

    def needs_calibration(self) -> bool:
        """Whether scoring reads calibration text (any criterion it selects by needs some)."""
        return any(c.needs_calibration for c in criteria.width_criteria_used(self))

    def importance_fields(self, hf_config=None) -> dict:
        """What the scores depend on (never the size): the common fields, every used
        criterion's own, and the GQA fold and MLP criterion where they apply."""
        keyed = self.key_fields()
        fields = WIDTH_KEY_FIELDS + tuple(
            n for c in criteria.width_criteria_used(self) for n in c.key_fields)
        out = {"method": "width", **{k: getattr(self, k) for k in fields}}
        out.update({k: keyed[k] for k in ("gqa_fold", "mlp_criterion") if k in keyed})
        return out

    def validate(self, hf_config) -> None:
        """Check settings against a model config (no weights); one-line ValueError if bad."""
        self._check_choices()
        geo = R.Geometry.from_config(hf_config, self.attn_unit)
        self._check_model(geo)

    def _check_choices(self) -> None:
        for key, choices in (
            ("criterion", WIDTH_CRITERIA.names()), ("reduction", REDUCTIONS),
            ("attn_unit", ATTN_UNITS), ("scope", SCOPES), ("gqa_fold", GQA_FOLDS),
        ):  # fmt: skip
            if getattr(self, key) not in choices:
                raise ValueError(
                    f"prune.{key}={getattr(self, key)!r} is unknown; choose from {', '.join(choices)}"
                )
        if (self.ratio is None) == (self.unit_ratio is None):
            got = [k for k in self.SIZE_FIELDS if getattr(self, k) is not None]
            raise ValueError(
                "width pruning needs exactly one of prune.ratio (of total params) or "
                f"prune.unit_ratio (got {got})"
            )
        for key in ("ratio", "unit_ratio"):
            v = getattr(self, key)
            if v is not None and not 0 <= v < 1:
                raise ValueError(f"prune.{key}={v} must be in [0, 1)")
        if not isinstance(self.align, int) or self.align < 1:
            raise ValueError(
                f"prune.align={self.align!r} must be a positive integer (1, 8, 64, 128)"
            )
        if not (self.prune_attn or self.prune_mlp):
            raise ValueError("width pruning needs prune_attn or prune_mlp (both are false)")
        crit = WIDTH_CRITERIA.get(self.criterion)
        if self.gqa_fold != "aligned" and not crit.gqa_foldable:
            foldable = [c.name for c in WIDTH_CRITERIA if c.gqa_foldable]
            raise ValueError(f"prune.gqa_fold={self.gqa_fold} applies to LLM-Pruner's criteria "
                             f"({', '.join(foldable)}), not {self.criterion}")
        if self.mlp_criterion is not None:
            if crit.joint_selection or crit.compensates_bias:
                raise ValueError(f"prune.mlp_criterion cannot be set with {self.criterion}, "
                                 "which scores heads and channels together")
            if self.mlp_criterion not in criteria.mlp_choices():
                raise ValueError(f"prune.mlp_criterion={self.mlp_criterion!r} is unknown; choose "
                                 f"from {', '.join(criteria.mlp_choices())}")

    def _check_model(self, geo: R.Geometry) -> list[int]:
        layers = R.resolve_layers(self.layer_start, self.layer_end, geo.n_layers)
        if self.gqa_fold == "llm_pruner" and geo.group > 1 and geo.unit != "kv_group":
            raise ValueError("prune.gqa_fold=llm_pruner needs prune.attn_unit=kv_group on a GQA "
                             "model (LLM-Pruner removes whole KV groups)")
        if self.prune_mlp and geo.inter % self.align:
            raise ValueError(f"prune.align={self.align} does not divide the MLP size {geo.inter}")
        counts = R.solve_counts(geo, self, len(layers))
        if self.ratio and counts.est_removed == 0:
            step = len(layers) * geo.channel_params * self.align / geo.total
            raise ValueError(f"prune.ratio={self.ratio} rounds to nothing removed (the smallest "
                             f"cut, {self.align} channel(s) in each of {len(layers)} layers, is "
                             f"{step:.4f} of the parameters): use prune.ratio >= {step / 2:.4f}")
        return layers


def select_kept(
    geo: R.Geometry, cfg: WidthPruneConfig, scores: WidthScores, counts: R.Counts
) -> dict:
    """{layer: {kept_q_heads, kept_kv_heads, kept_mlp_channels}} for every layer (dense ids)."""
    layers, p = scores.layers, len(scores.layers)
    orders = {i: R.unit_order(geo, scores.attn[i]) for i in layers if cfg.prune_attn}
    mlp_sorted = {
        i: torch.sort(scores.mlp[i].double(), stable=True) for i in layers if cfg.prune_mlp
    }
    a_cap, c_cap = geo.n_units - 1, geo.inter - cfg.align
    n_attn = dict.fromkeys(layers, 0)
    n_drop = dict.fromkeys(layers, 0)
    if cfg.scope == "uniform":
        n_attn = dict.fromkeys(layers, counts.attn_removed // p)
        n_drop = dict.fromkeys(layers, geo.inter - counts.mlp_kept // p)
    elif WIDTH_CRITERIA.get(cfg.criterion).joint_selection:
        # the first removal of a kind in a layer adds a compensation bias when the layer has none
        comp = criteria.compensates(cfg)
        a_bias, m_bias = (
            comp * (not geo.o_bias) * geo.hidden,
            comp * (not geo.down_bias) * geo.hidden,
        )
        cands = []
        for i in layers:
            if cfg.prune_attn:
                mu, sd = scores.attn_stats[i]
                for k, v in enumerate(orders[i][0][:a_cap]):
                    cands.append(((v - mu) / sd, i, k, "attn", geo.unit_params - (k == 0) * a_bias))
            if cfg.prune_mlp:
                mu, sd = scores.mlp_stats[i]
                for k, v in enumerate(mlp_sorted[i].values[:c_cap].tolist()):
                    cands.append(
                        ((v - mu) / sd, i, k, "mlp", geo.channel_params - (k == 0) * m_bias)
                    )
        target = counts.est_removed if cfg.ratio is None else cfg.ratio * geo.total
        attn, mlp = R.take_joint(cands, target)
        n_attn.update(attn)
        n_drop.update(mlp)
    else:
        if cfg.prune_attn:
            cands = [(v, i, k) for i in layers for k, v in enumerate(orders[i][0][:a_cap])]
            n_attn.update(R.take_lowest(cands, counts.attn_removed))
        if cfg.prune_mlp:
            cands = [
                (v, i, k)
                for i in layers
                for k, v in enumerate(mlp_sorted[i].values[:c_cap].tolist())
            ]
            n_drop.update(R.take_lowest(cands, p * geo.inter - counts.mlp_kept))
    if cfg.prune_mlp and cfg.align > 1 and cfg.scope == "global":
        kept = {i: geo.inter - n_drop[i] for i in layers}
        total = R._round(sum(kept.values()) / cfg.align) * cfg.align
        n_drop = {i: geo.inter - k for i, k in R.largest_remainder(kept, cfg.align, total).items()}
    plan = {}
    for i in range(geo.n_layers):
        q, kv, ch = set(range(geo.n_q)), list(range(geo.n_kv)), list(range(geo.inter))
        if i in n_attn and n_attn[i]:
            removed = orders[i][1][: n_attn[i]]
            if geo.unit == "kv_group":
                kv = sorted(set(kv) - set(removed))
                q = {h for g in kv for h in range(g * geo.group, (g + 1) * geo.group)}
            else:
                q -= {h for slot in removed for h in slot}
        if i in n_drop and n_drop[i]:
            ch = sorted(mlp_sorted[i].indices[n_drop[i] :].tolist())
        plan[i] = {"kept_q_heads": sorted(q), "kept_kv_heads": kv, "kept_mlp_channels": ch}
    return plan


def _compensation(lin: nn.Module, kept: torch.Tensor, mean_inp: torch.Tensor | None):
    """FLAP: removed input channels' calibration mean times their weight columns -> bias."""
    if mean_inp is None:
        return None
    drop = torch.ones(lin.in_features, dtype=torch.bool)
    drop[kept] = False
    w = lin.weight.detach().float()[:, drop.to(lin.weight.device)]
    return w @ mean_inp.to(w.device).float()[drop.to(w.device)]


def apply_width(
    model, plan: dict, scores: WidthScores | None = None, compensate: bool = False
) -> None:
    """Slice every layer to the kept heads/channels of `plan`, in place (through the adapter,
    which knows where each family keeps its projections)."""
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    for i, k in plan.items():
        layer = layers[i]
        shape = adapter.shape(layer)
        if len(k["kept_q_heads"]) < shape.n_q:
            q = head_rows(k["kept_q_heads"], shape.head_dim)
            o = adapter.out_proj(layer, "attn")
            comp = _compensation(o, q, scores.attn_mean_inp.get(i)) if compensate else None
            adapter.prune_attention(layer, k["kept_q_heads"], k["kept_kv_heads"], comp)
        if len(k["kept_mlp_channels"]) < shape.inter:
            ch = torch.tensor(k["kept_mlp_channels"])
            down = adapter.out_proj(layer, "mlp")
            comp = _compensation(down, ch, scores.mlp_mean_inp.get(i)) if compensate else None
            adapter.prune_mlp(layer, k["kept_mlp_channels"], comp)


def prune_width(
    model, cfg: WidthPruneConfig, calib_ids=None, scores: WidthScores | None = None
) -> dict:
    """Width-prune `model` in place; returns the JSON-serialisable plan."""
    cfg._check_choices()
    geo = R.Geometry.from_model(model, cfg.attn_unit)
    layers = cfg._check_model(geo)
    counts = R.solve_counts(geo, cfg, len(layers))
    before = count_params(model)
    noop = counts.attn_removed == 0 and counts.mlp_kept == len(layers) * geo.inter
    if scores is None and not noop:
        scores = score_groups(model, cfg, calib_ids)
    if scores is not None:
        want = (cfg.criterion, cfg.reduction, geo.unit, layers)
        have = (scores.criterion, scores.reduction, scores.attn_unit, scores.layers)
        if want != have:
            raise ValueError(f"scores were computed for {have}, this config needs {want}")
    if noop:
        full = {"kept_q_heads": list(range(geo.n_q)), "kept_kv_heads": list(range(geo.n_kv))}
        plan_layers = {
            i: {**full, "kept_mlp_channels": list(range(geo.inter))} for i in range(geo.n_layers)
        }
    else:
        plan_layers = select_kept(geo, cfg, scores, counts)
        apply_width(model, plan_layers, scores, criteria.compensates(cfg))
    record_layer_shapes(model)
    after = count_params(model)
    pruned = [plan_layers[i] for i in layers]
    units = sum(geo.n_units - _units_left(geo, k) for k in pruned)
    dropped = sum(geo.inter - len(k["kept_mlp_channels"]) for k in pruned)
    return {
        "method": "width",
        "criterion": cfg.criterion,
        "reduction": cfg.reduction,
        "attn_unit": cfg.attn_unit,
        "scope": cfg.scope,
        "layer_range": [layers[0], layers[-1] + 1],
        "layers": plan_layers,
        "params_before": before,
        "params_after": after,
        "ratio_requested": cfg.ratio,
        "unit_ratio": cfg.unit_ratio if cfg.unit_ratio is not None else counts.unit_ratio,
        "unit_ratio_achieved": {
            "attn": units / (geo.n_units * len(layers)),
            "mlp": dropped / (geo.inter * len(layers)),
        },
        "ratio_achieved": (before["total"] - after["total"]) / before["total"],
        "calibration": dict(scores.calibration) if scores is not None else {},
    }


def _units_left(geo: R.Geometry, kept: dict) -> int:
    if geo.unit == "kv_group":
        return len(kept["kept_kv_heads"])
    return len(kept["kept_q_heads"]) // geo.n_kv


register(PruneMethod("width", WidthPruneConfig, score=score_groups,
                     apply=lambda model, cfg, calib, scores: prune_width(model, cfg, calib, scores),
                     plan_metrics=lambda plan: {"prune/unit_ratio": plan["unit_ratio"]}))

"""Hybrid pruning (`prune=hybrid`): one total size, a share of it cut by depth, the rest by width.

`prune.ratio` is the fraction of TOTAL parameters removed, as for depth and width;
`prune.depth_share` (0..1) of those parameters go by depth (whole blocks, or attention / MLP
sublayers with `prune.depth_unit`), the rest by width (heads / KV groups and MLP channels). Each
part keeps its own criterion (`prune.depth_criterion`, `prune.width_criterion`) and every other
depth option (`protect_first`, `protect_last`, `iterative`) and width option (`layer_start`,
`layer_end`, `attn_unit`, `scope`, `reduction`, `mlp_criterion`, ...) keeps its name.

Order (`prune.order`): `depth_first` (default; Minitron's combined recipe): the depth criterion
ranks the dense blocks, the removed blocks go, and the width criterion scores the model that is
left, so no width score is spent on a block that is removed anyway. `width_first`: the width
criterion scores the dense model and cuts every layer the width part would cut, then the depth
criterion ranks the blocks of the thinner model. The order changes which units are chosen, never
the shape: both orders remove the same number of blocks and leave the same layer widths (so the
same speed), which isolates the scoring order (width_first needs `scope=uniform` and a width
layer range that covers the depth candidates, the defaults; its achieved depth share counts the
thinner blocks, so it is lower than depth_first's at the same shape). The depth
part removes the number of units closest to `ratio * depth_share` of the dense parameters; the
width part then removes `(ratio * dense - removed by depth) / shallower total` of the shallower
model, so the width part absorbs the depth part's rounding and the whole matches `ratio` (the
achieved fraction and the achieved depth share are in the plan). Width layer indices
(`layer_start`, `layer_end`) are the shallower model's; with the defaults (depth protects the
first 4 and last 2 blocks, width prunes layers 4..-2) both parts spare the same dense blocks.

Edges are exact: `depth_share=0` is the width run (same scores, same kept units) and
`depth_share=1` the depth run (no width part, even where depth rounds short of `ratio`), in
either order.
The first step's importance is the stage cache's `importance` entry: the depth scores (or, at
share 0, the width scores of the dense model), which do not depend on the share, so one sweep
over shares scores the dense model once, and shares the entry with the plain depth (width) run.
With `width_first`, the first step is the width scores of the dense model, shared the same way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from harness.keys import Keyed
from harness.models.params import count_params
from harness.models.uneven import build_skeleton, record_layer_shapes
from harness.pruning import ratio as R
from harness.pruning.blocks import remove_blocks
from harness.pruning.depth import (
    DepthPruneConfig,
    prune_depth,
    score_blocks,
)
from harness.pruning.importance.width import score_groups
from harness.pruning.methods import PruneMethod, register
from harness.pruning.width import WidthPruneConfig, prune_width

# hybrid field -> the depth / width config's field of the same meaning
DEPTH_FIELDS = {"depth_criterion": "criterion", "depth_unit": "unit", "protect_first": "protect_first",
                "protect_last": "protect_last", "iterative": "iterative", "seed": "seed"}
WIDTH_FIELDS = {"width_criterion": "criterion", "reduction": "reduction", "attn_unit": "attn_unit",
                "scope": "scope", "layer_start": "layer_start", "layer_end": "layer_end",
                "prune_attn": "prune_attn", "prune_mlp": "prune_mlp", "align": "align",
                "seed": "seed", "flap_bias_compensation": "flap_bias_compensation",
                "gqa_fold": "gqa_fold", "mlp_criterion": "mlp_criterion"}


@dataclass
class HybridPruneConfig(Keyed):
    """`prune=hybrid`: `ratio` of total params, `depth_share` of them by depth (see module)."""

    SIZE_FIELDS: ClassVar[tuple[str, ...]] = ("ratio",)
    DETERMINING = ("name", "ratio", "depth_share", "order", *DEPTH_FIELDS, *WIDTH_FIELDS)
    ORDERS: ClassVar[tuple[str, ...]] = ("depth_first", "width_first")
    NOT_DETERMINING = ()

    name: str = "hybrid"
    ratio: float | None = None
    depth_share: float = 0.5
    order: str = "depth_first"  # or width_first: same shape, width scored on the dense model
    # depth part, then width part: each default is prune=depth's / prune=width's (written once)
    depth_criterion: str = DepthPruneConfig.criterion
    depth_unit: str = DepthPruneConfig.unit
    protect_first: int = DepthPruneConfig.protect_first
    protect_last: int = DepthPruneConfig.protect_last
    iterative: bool = DepthPruneConfig.iterative
    width_criterion: str = WidthPruneConfig.criterion
    reduction: str = WidthPruneConfig.reduction
    attn_unit: str = WidthPruneConfig.attn_unit
    scope: str = WidthPruneConfig.scope
    layer_start: int = WidthPruneConfig.layer_start
    layer_end: int = WidthPruneConfig.layer_end
    prune_attn: bool = WidthPruneConfig.prune_attn
    prune_mlp: bool = WidthPruneConfig.prune_mlp
    align: int = WidthPruneConfig.align
    seed: int = WidthPruneConfig.seed
    flap_bias_compensation: bool = WidthPruneConfig.flap_bias_compensation
    gqa_fold: str = WidthPruneConfig.gqa_fold
    mlp_criterion: str | None = WidthPruneConfig.mlp_criterion

    @property
    def criterion(self) -> str:
        """Both criteria, for messages and labels ("ppl+taylor")."""
        return f"{self.depth_criterion}+{self.width_criterion}"

    # ---- the two parts ----------------------------------------------------------------------
    def _depth(self, **size) -> DepthPruneConfig:
        return DepthPruneConfig(**{v: getattr(self, k) for k, v in DEPTH_FIELDS.items()}, **size)

    def _width(self, width_ratio: float) -> WidthPruneConfig:
        return WidthPruneConfig(**{v: getattr(self, k) for k, v in WIDTH_FIELDS.items()},
                                ratio=width_ratio)

    def num_depth(self, hf_config) -> int:
        """Depth units removed: those closest to `ratio * depth_share` of the total params
        (at share 1 exactly the depth run's count)."""
        if not self.ratio or self.depth_share <= 0:
            return 0
        share = self.ratio if self.depth_share == 1 else self.ratio * self.depth_share
        return self._depth(ratio=share).blocks_for_ratio(hf_config)

    def depth_config(self, hf_config) -> DepthPruneConfig | None:
        """The depth part (None when it removes nothing); at share 1 the depth run's config."""
        if self.depth_share == 1:
            return self._depth(ratio=self.ratio)
        n = self.num_depth(hf_config)
        return self._depth(num_blocks=n) if n else None

    def width_ratio(self, dense_total: int, removed: int, left_total: int) -> float:
        """The width part's fraction of the shallower model: what depth left of the target."""
        if removed == 0:
            return self.ratio or 0.0  # share 0: exactly the width run's ratio
        return max(0.0, ((self.ratio or 0.0) * dense_total - removed) / left_total)

    def width_config(self, geo: R.Geometry, dense_total: int) -> WidthPruneConfig | None:
        """The width part on the shallower model of geometry `geo` (None when nothing is left
        to remove by width, or it rounds to no unit)."""
        if self.depth_share == 1 or not self.ratio:
            return None
        w = self.width_ratio(dense_total, dense_total - geo.total, geo.total)
        if w <= 0:
            return None
        cfg = self._width(w)
        layers = R.resolve_layers(cfg.layer_start, cfg.layer_end, geo.n_layers)
        return cfg if R.solve_counts(geo, cfg, len(layers)).est_removed else None

    def _after_depth(self, hf_config) -> tuple[R.Geometry, int]:
        """(geometry of the model the width part sees, dense total), from the config alone:
        the blocks removed are unknown before scoring, but their count and size are not."""
        with torch.device("meta"):
            model = build_skeleton(copy.deepcopy(hf_config))  # cut below: never the caller's
        dense = count_params(model)["total"]
        n = self.num_depth(hf_config) if self.depth_unit == "block" else 0
        if n:
            remove_blocks(model, range(self.protect_first, self.protect_first + n))
        return R.Geometry.from_model(model, self.attn_unit), dense

    def width_first(self) -> bool:
        """Whether the width part runs first (only a mix has an order: shares 0 and 1 do not)."""
        return self.order == "width_first" and 0 < self.depth_share < 1

    def dense_width_config(self, hf_config) -> WidthPruneConfig | None:
        """width_first: the width part on the dense model, with the per-layer counts the
        depth_first width part has on the shallower model (so the shapes agree once the depth
        part removes its blocks): the ratio of the dense model those counts remove."""
        geo, dense = self._after_depth(hf_config)
        width = self.width_config(geo, dense)
        if width is None:
            return None
        full = R.Geometry.from_config(copy.deepcopy(hf_config), self.attn_unit)
        shallow = R.resolve_layers(width.layer_start, width.layer_end, geo.n_layers)
        layers = R.resolve_layers(width.layer_start, width.layer_end, full.n_layers)
        counts = R.solve_counts(geo, width, len(shallow))
        per_attn, per_kept = counts.attn_removed // len(shallow), counts.mlp_kept // len(shallow)
        want = (per_attn * len(layers), per_kept * len(layers))
        cfg = replace(width, ratio=R.removed_params(full, width, len(layers), *want) / full.total)
        got = R.solve_counts(full, cfg, len(layers))
        if (got.attn_removed, got.mlp_kept) != want:  # never silently a different shape
            raise ValueError("prune.order=width_first: these width options do not give the dense "
                             "model the depth-first layer widths; use prune.order=depth_first")
        return cfg

    def _check_width_first(self, hf_config) -> None:
        if self.scope != "uniform":
            raise ValueError(f"prune.order=width_first needs prune.scope=uniform (got {self.scope}): "
                             "only uniform widths give both orders the same shape")
        n = hf_config.num_hidden_layers
        layers = set(R.resolve_layers(self.layer_start, self.layer_end, n))
        cands = set(range(self.protect_first, n - self.protect_last))
        if not cands <= layers:
            raise ValueError(f"prune.order=width_first needs the width layers "
                             f"[{self.layer_start}, {self.layer_end}) to cover the depth "
                             f"candidates {self.protect_first}..{n - self.protect_last - 1}, so "
                             "every removed block is one the width part cut")
        self.dense_width_config(hf_config)  # the same widths as depth_first, or one line why

    # ---- keys -------------------------------------------------------------------------------
    def key_fields(self) -> dict:
        """The hybrid's own fields, and each part's as that part keys them (a criterion's seed
        only for criteria that use it, FLAP's bias compensation only for FLAP, ...)."""
        out = super().key_fields()
        depth = self._depth(ratio=self.ratio).key_fields()
        width = self._width(self.ratio).key_fields()
        for fields, part in ((DEPTH_FIELDS, depth), (WIDTH_FIELDS, width)):
            for ours, theirs in fields.items():
                if theirs not in part and ours != "seed":
                    out.pop(ours, None)
        if "seed" not in depth and "seed" not in width:
            out.pop("seed", None)
        if not self.width_first():  # depth_first, or an edge share (no order): rows from before
            out.pop("order", None)  # `order` keep their keys, and edges are shared by both orders
        return out

    def importance_fields(self, hf_config) -> dict | None:
        """The first step's scores: the depth part's (they never depend on the share, except a
        window criterion's window), or at share 0 the width scores of the dense model. They are
        the plain depth (width) run's scores, so that run's cache entry serves too."""
        depth = None if self.width_first() else self.depth_config(hf_config)
        if depth is not None:
            return depth.importance_fields(hf_config)
        if not self.ratio:
            return None
        return self._width(self.ratio).importance_fields(hf_config)

    def needs_calibration(self) -> bool:
        return (self.depth_share > 0 and self._depth(ratio=self.ratio).needs_calibration()) or \
            (self.depth_share < 1 and self._width(self.ratio or 0.0).needs_calibration())

    # ---- validation -------------------------------------------------------------------------
    def validate(self, hf_config) -> None:
        """One-line ValueError for anything that cannot work on this model config."""
        if self.ratio is None or not 0 < self.ratio < 1:
            raise ValueError(f"prune.ratio={self.ratio} must be in (0, 1) for prune=hybrid "
                             "(the fraction of total params removed by depth and width together)")
        if not 0 <= self.depth_share <= 1 or isinstance(self.depth_share, bool):
            raise ValueError(f"prune.depth_share={self.depth_share} must be in [0, 1] (the share "
                             "of the removed params cut by depth; 0 = width only, 1 = depth only)")
        if self.order not in self.ORDERS:
            raise ValueError(f"prune.order={self.order!r}; choose from {list(self.ORDERS)}")
        if self.width_first():
            self._check_width_first(hf_config)
        if self.depth_unit != "block" and 0 < self.depth_share < 1:
            raise ValueError(f"prune.depth_unit={self.depth_unit} with width pruning is not "
                             "supported yet (width needs whole blocks); use prune.depth_unit=block "
                             "or prune.depth_share=1")
        if self.depth_share > 0:
            try:
                self._depth(num_blocks=0).validate(hf_config)  # criterion, unit, protection
                depth = self.depth_config(hf_config)
                if depth is not None:
                    depth.validate(hf_config)
            except ValueError as e:
                raise ValueError(self._part_error("depth", e)) from None
        if self.depth_share < 1:
            try:
                self._width(self.ratio)._check_choices()
                geo, dense = self._after_depth(hf_config)
                width = self.width_config(geo, dense)
                if width is not None:
                    width._check_model(geo)
            except ValueError as e:
                raise ValueError(self._part_error("width", e)) from None

    def _part_error(self, part: str, e: ValueError) -> str:
        """A part's message, with its keys spelt as the hybrid spells them."""
        msg = str(e).replace("prune.criterion", f"prune.{part}_criterion")
        msg = msg.replace("prune.unit=", "prune.depth_unit=").replace("prune.ratio=", "ratio ")
        return f"prune=hybrid, {part} part (prune.depth_share={self.depth_share}): {msg}"


# ---- scoring and cutting -------------------------------------------------------------------
def score_hybrid(model, cfg: HybridPruneConfig, calib: torch.Tensor):
    """The first step's cacheable scores (see `importance_fields`)."""
    depth = None if cfg.width_first() else cfg.depth_config(model.config)
    if depth is not None:
        return score_blocks(model, depth, calib)
    return score_groups(model, cfg._width(cfg.ratio), calib)


def prune_hybrid(model, cfg: HybridPruneConfig, calib: torch.Tensor, scores=None) -> dict:
    """Depth part, then width part scored on the shallower model (or `width_first`); in place.
    The plan holds both parts' plans, the achieved fraction and the achieved depth share."""
    cfg.validate(model.config)
    if cfg.width_first():
        return _width_then_depth(model, cfg, calib, scores)
    before = count_params(model)
    depth = cfg.depth_config(model.config)
    depth_plan = width_plan = None
    if depth is not None:
        depth_plan = prune_depth(model, depth, calib, scores if isinstance(scores, dict) else None)
    mid = count_params(model)
    width = None
    if cfg.depth_share < 1:
        width = cfg.width_config(R.Geometry.from_model(model, cfg.attn_unit), before["total"])
    if width is not None:
        reuse = scores if depth is None and not isinstance(scores, dict) else None
        width_plan = prune_width(model, width, calib, reuse)
    return _plan(cfg, "depth_then_width", before, before["total"] - mid["total"], depth_plan,
                 width_plan, model, calib)


def _width_then_depth(model, cfg: HybridPruneConfig, calib: torch.Tensor, scores=None) -> dict:
    """prune.order=width_first: the width part on the dense model (its scores may be the cached
    first step), then the depth part's blocks ranked on the thinner model."""
    before = count_params(model)
    n = cfg.num_depth(model.config)
    width = cfg.dense_width_config(model.config)
    width_plan = prune_width(model, width, calib, scores) if width is not None else None
    mid = count_params(model)
    depth_plan = prune_depth(model, cfg._depth(num_blocks=n), calib) if n else None
    record_layer_shapes(model)  # the per-layer shapes of the blocks that are left
    return _plan(cfg, "width_then_depth", before, mid["total"] - count_params(model)["total"],
                 depth_plan, width_plan, model, calib)


def _plan(cfg, order, before, removed_depth, depth_plan, width_plan, model, calib) -> dict:
    after = count_params(model)
    gone = before["total"] - after["total"]
    return {
        "method": "hybrid",
        "order": order,
        "depth_criterion": cfg.depth_criterion,
        "width_criterion": cfg.width_criterion,
        "depth_share": cfg.depth_share,
        "depth_share_achieved": removed_depth / gone if gone else 0.0,
        "depth": depth_plan,
        "width": width_plan,
        "params_before": before,
        "params_after": after,
        "ratio_requested": cfg.ratio,
        "ratio_achieved": gone / before["total"],
        "calibration": {"num_samples": int(calib.shape[0]), "seq_len": int(calib.shape[1])},
    }


def _plan_metrics(plan: dict) -> dict:
    depth, width = plan["depth"] or {}, plan["width"] or {}
    out = {"prune/depth_share_achieved": plan["depth_share_achieved"],
           "prune/num_removed": depth.get("num_removed", 0),
           "prune/removed": str(depth.get("removed", [])),
           "prune/width_ratio": width.get("ratio_requested") or 0.0}
    if width:
        out["prune/unit_ratio"] = width["unit_ratio"]
    return out


register(PruneMethod("hybrid", HybridPruneConfig, score=score_hybrid,
                     apply=lambda model, cfg, calib, scores: prune_hybrid(model, cfg, calib, scores),
                     plan_metrics=_plan_metrics))

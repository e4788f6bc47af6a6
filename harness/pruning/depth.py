"""Depth pruning: remove whole decoder blocks (or only their attention / MLP sublayers).

`prune_depth(model, cfg, calib)` scores the unprotected blocks with one criterion
(`depth_scores`), picks the least important ones and removes them in place; the returned plan
says what went and why. Scoring (`score_blocks`) is separate from selection (`select_blocks`)
so that a sweep can score once and cut at several sizes.

Checkpoints: removing blocks gives a stock HF model (fewer layers, renumbered KV-cache slots,
`num_hidden_layers`/`layer_types` updated) that `AutoModelForCausalLM.from_pretrained` loads
as is. Removing sublayers cannot be said in a stock config: the indices are recorded as
`config.harness_skip_attn` / `config.harness_skip_mlp` and such a checkpoint must be loaded
with `harness.models.uneven.load_uneven(dir)` (the skeleton, then a strict load).
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from harness.keys import Keyed
from harness.models.adapters import adapter_for
from harness.models.params import count_params
from harness.models.uneven import SKIP_KEYS, apply_sublayer_skips, build_skeleton
from harness.pruning.blocks import UNITS, decoder_layers, remove_blocks, remove_sublayers
from harness.pruning.importance.depth import candidates
from harness.pruning.importance.registry import (
    DEPTH_CRITERIA,
    DEPTH_KEY_FIELDS,
    DepthContext,
    DepthCriterion,
)
from harness.pruning.methods import PruneMethod, register


@dataclass
class DepthPruneConfig(Keyed):
    """`prune=depth`. Set exactly one of ratio (of TOTAL params), num_blocks, blocks.

    `unit` attn/mlp removes only that sublayer of the chosen blocks (counts are then
    sublayers). `protect_first`/`protect_last` blocks are never removed (0 switches off).
    """

    SIZE_FIELDS: ClassVar[tuple[str, ...]] = ("ratio", "num_blocks", "blocks")
    DETERMINING = ("name", "criterion", "ratio", "num_blocks", "blocks", "protect_first",
                   "protect_last", "iterative", "unit", "seed")
    NOT_DETERMINING = ()

    name: str = "depth"
    criterion: str = "ppl"
    ratio: float | None = None
    num_blocks: int | None = None
    blocks: list[int] | None = None
    protect_first: int = 4
    protect_last: int = 2
    iterative: bool = False
    unit: str = "block"
    seed: int = 0

    def key_fields(self) -> dict:
        """A field some criterion declares (the seed) counts only for the criteria declaring it."""
        out = super().key_fields()
        own = self._criterion().key_fields if self.criterion in DEPTH_CRITERIA else ()
        for name in {n for c in DEPTH_CRITERIA for n in c.key_fields} - set(own):
            out.pop(name, None)
        return out

    def _criterion(self) -> DepthCriterion:
        return DEPTH_CRITERIA.get(self.criterion)

    def needs_calibration(self) -> bool:
        """Whether scoring reads calibration text (explicit blocks need none)."""
        return self.blocks is None and bool(self._criterion().needs)

    def importance_fields(self, hf_config) -> dict | None:
        """What the criterion's scores depend on (never the size, except a window criterion's
        window); None when nothing is scored or the scores cannot be reused (iterative,
        explicit blocks)."""
        if self.iterative or self.blocks is not None or self.num_to_remove(hf_config) == 0:
            return None
        crit = self._criterion()
        out = {"method": "depth", **{k: getattr(self, k) for k in DEPTH_KEY_FIELDS + crit.key_fields}}
        if crit.window:
            out["num_remove"] = self.num_to_remove(hf_config)
        return out

    def max_removable(self, hf_config) -> int:
        return max(0, hf_config.num_hidden_layers - self.protect_first - self.protect_last)

    def blocks_for_ratio(self, hf_config) -> int:
        """Number of units whose removal comes closest to `ratio` of the total params."""
        unit, total = unit_params(hf_config, self.unit), total_params(hf_config)
        return math.floor((self.ratio or 0.0) * total / unit + 0.5)

    def num_to_remove(self, hf_config) -> int:
        if self.blocks is not None:
            return len(set(self.blocks))
        if self.num_blocks is not None:
            return self.num_blocks
        return self.blocks_for_ratio(hf_config)

    def validate(self, hf_config) -> None:
        """Raise ValueError (one line) for anything that cannot work on this model config."""
        chosen = [k for k in ("ratio", "num_blocks", "blocks") if getattr(self, k) is not None]
        layers, most = hf_config.num_hidden_layers, self.max_removable(hf_config)
        lo, hi = self.protect_first, layers - self.protect_last
        span = f"{layers} layers, protect_first={lo}, protect_last={self.protect_last}"
        types = set(getattr(hf_config, "layer_types", None) or [])
        crit = self._criterion()
        checks = [
            (
                self.unit not in UNITS,
                f"prune.unit={self.unit!r} is unknown; choose from {', '.join(UNITS)}",
            ),
            (
                self.unit not in crit.units,
                f"criterion {self.criterion!r} supports prune.unit {', '.join(crit.units)} only, "
                f"got {self.unit!r}",
            ),
            (
                crit.window and self.iterative,
                f"criterion {self.criterion!r} removes one contiguous window; "
                "prune.iterative is not supported",
            ),
            (
                len(chosen) != 1,
                f"set exactly one of prune.ratio, prune.num_blocks, prune.blocks (got {chosen})",
            ),
            (
                self.protect_first < 0 or self.protect_last < 0,
                "prune.protect_first and prune.protect_last must be >= 0",
            ),
            (
                self.unit == "attn" and len(types) > 1,
                f"unit 'attn' needs a single attention type, this model mixes {sorted(types)}",
            ),
            (
                self.ratio is not None and not 0.0 <= self.ratio < 1.0,
                f"prune.ratio must be in [0, 1), got {self.ratio}",
            ),
            (
                self.num_blocks is not None and not 0 <= self.num_blocks <= most,
                f"prune.num_blocks={self.num_blocks} must be in [0, {most}] ({span})",
            ),
            (
                self.blocks is not None and any(not lo <= b < hi for b in self.blocks),
                f"prune.blocks {self.blocks} has out-of-range or protected indices; "
                f"allowed {lo}..{hi - 1} ({span})",
            ),
        ]
        for failed, message in checks:
            if failed:
                raise ValueError(message)
        if self.blocks is not None and not self.blocks:
            raise ValueError("prune.blocks=[] removes nothing: for the dense model use prune=none")
        unit = unit_params(hf_config, self.unit) / total_params(hf_config)
        if self.ratio and self.blocks_for_ratio(hf_config) == 0:
            raise ValueError(f"prune.ratio={self.ratio} rounds to 0 {self.unit}s (one {self.unit} "
                             f"is {unit:.4f} of the parameters): use prune.ratio >= "
                             f"{unit / 2:.4f} or prune.num_blocks")
        if self.ratio is not None and (need := self.blocks_for_ratio(hf_config)) > most:
            reach = most * unit_params(hf_config, self.unit) / total_params(hf_config)
            raise ValueError(
                f"prune.ratio={self.ratio} needs {need} {self.unit}s but at most {most} can go "
                f"({span}); the maximum reachable ratio is {reach:.4f}"
            )


_COUNTS: dict[str, dict[str, int]] = {}


def _param_counts(hf_config) -> dict[str, int]:
    """Parameter counts read off a model built on the meta device (no weights, any family):
    one dense block and its attention / MLP sublayer (with the norms each owns), and the
    total as `count_params` counts it (tied embeddings once, skipped sublayers left out)."""
    key = hf_config.to_json_string()
    if key not in _COUNTS:
        dense = copy.deepcopy(hf_config)
        for k in SKIP_KEYS.values():
            if hasattr(dense, k):
                delattr(dense, k)
        with torch.device("meta"):
            model = build_skeleton(dense)
        adapter = adapter_for(model)
        layer = adapter.layers(model)[0]
        counts = {unit: sum(p.numel() for m in adapter.unit_modules(layer, unit)
                            for p in m.parameters()) for unit in UNITS}
        model.config = hf_config
        apply_sublayer_skips(model)
        _COUNTS[key] = {**counts, "total": count_params(model)["total"]}
    return _COUNTS[key]


def unit_params(hf_config, unit: str = "block") -> int:
    """Parameters of one block, or of one attention / MLP sublayer with its norms."""
    return _param_counts(hf_config)[unit]


def total_params(hf_config) -> int:
    """All parameters (tied embeddings once), sublayers already skipped left out."""
    return _param_counts(hf_config)["total"]


def score_blocks(model, cfg: DepthPruneConfig, calib: torch.Tensor, num_remove: int | None = None):
    """{block index: importance} for every candidate of the model as it is now.

    A window criterion's (angular) scores depend on the window size: `num_remove`, by default derived from `cfg`."""
    n = num_remove if num_remove is not None else cfg.num_to_remove(model.config)
    cands = candidates(model, cfg.unit, cfg.protect_first, cfg.protect_last)
    crit = cfg._criterion()
    if cfg.unit not in crit.units:
        raise ValueError(f"criterion {crit.name!r} supports unit {', '.join(crit.units)} only, "
                         f"got {cfg.unit!r}")
    return crit.scorer(DepthContext(model, calib, cands, cfg.unit, max(n, 1), cfg))


def select_blocks(
    scores: dict[int, float], n: int, cfg: DepthPruneConfig, num_layers: int
) -> list[int]:
    """The `n` least important unprotected blocks (ties: lower index). A window criterion: the window
    start with the smallest distance (its scores must have been computed for this `n`)."""
    if n == 0:
        return []
    hi = num_layers - cfg.protect_last
    pool = {i: s for i, s in scores.items() if cfg.protect_first <= i < hi}
    if cfg._criterion().window:
        starts = [i for i in pool if i + n <= hi]
        if not starts:
            raise ValueError(f"no window of {n} unprotected blocks to remove")
        best = min(starts, key=lambda i: (pool[i], i))
        return list(range(best, best + n))
    if len(pool) < n:
        raise ValueError(f"asked to remove {n} blocks but only {len(pool)} candidates were scored")
    return sorted(sorted(pool, key=lambda i: (pool[i], i))[:n])


def _remove(model, indices, unit: str) -> None:
    if unit == "block":
        remove_blocks(model, indices)
    else:
        remove_sublayers(model, indices, unit)


def _iterate(model, cfg: DepthPruneConfig, calib, n: int):
    """Remove one unit at a time, re-scoring the reduced model; returns (removed, rounds)."""
    alive = list(range(len(decoder_layers(model))))  # current index -> dense index
    removed, rounds = [], []
    for _ in range(n):
        scores = score_blocks(model, cfg, calib, num_remove=1)
        (pick,) = select_blocks(scores, 1, cfg, len(alive))
        rounds.append({"scores": {alive[i]: s for i, s in scores.items()}, "removed": alive[pick]})
        removed.append(alive[pick])
        _remove(model, [pick], cfg.unit)
        if cfg.unit == "block":
            del alive[pick]
    return sorted(removed), rounds


def prune_depth(model, cfg: DepthPruneConfig, calib_ids: torch.Tensor, scores=None) -> dict:
    """Score, select and remove in place; returns the JSON-serialisable plan.

    `scores` (from `score_blocks` on this same model and config) skips scoring, so a sweep can
    reuse them across sizes; it is ignored with `iterative` or explicit `blocks`."""
    cfg.validate(model.config)
    n = cfg.num_to_remove(model.config)
    num_layers, before = len(decoder_layers(model)), count_params(model)
    criterion, rounds = cfg.criterion, None
    if cfg.blocks is not None:
        criterion, scores, removed = "explicit", {}, sorted(set(cfg.blocks))
    elif n == 0:
        scores, removed = {}, []
    elif cfg.iterative:
        removed, rounds = _iterate(model, cfg, calib_ids, n)
        scores = rounds[0]["scores"]
    else:
        if scores is None:
            scores = score_blocks(model, cfg, calib_ids, num_remove=n)
        removed = select_blocks(scores, n, cfg, num_layers)
    if removed and not cfg.iterative:
        _remove(model, removed, cfg.unit)
    after = count_params(model)
    plan = {
        "method": "depth",
        "criterion": criterion,
        "unit": cfg.unit,
        "scores": {int(i): float(s) for i, s in scores.items()},
        "removed": [int(i) for i in removed],
        "num_removed": len(removed),
        "num_layers_before": num_layers,
        "num_layers_after": len(decoder_layers(model)),
        "protect_first": cfg.protect_first,
        "protect_last": cfg.protect_last,
        "iterative": cfg.iterative,
        "seed": cfg.seed,
        "params_before": before,
        "params_after": after,
        "ratio_requested": cfg.ratio,
        "ratio_achieved": (before["total"] - after["total"]) / before["total"],
        "calibration": {"num_samples": int(calib_ids.shape[0]), "seq_len": int(calib_ids.shape[1])},
    }
    if rounds is not None:
        plan["rounds"] = rounds
    return plan


def save_plan(plan: dict, model_dir) -> Path:
    """Write `prune_plan.json` into `model_dir` atomically (temp file there, then os.replace)."""
    out = Path(model_dir) / "prune_plan.json"
    fd, tmp = tempfile.mkstemp(prefix=".prune_plan-", suffix=".json", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(plan, f, indent=2)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def _plan_metrics(plan: dict) -> dict:
    return {"prune/num_removed": plan["num_removed"], "prune/removed": str(plan["removed"])}


register(PruneMethod("depth", DepthPruneConfig, score=score_blocks,
                     apply=lambda model, cfg, calib, scores: prune_depth(model, cfg, calib, scores),
                     plan_metrics=_plan_metrics))

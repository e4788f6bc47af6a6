"""The pipeline's one door into pruning: score (cacheable), apply, and summarise a plan."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch


def importance_fields(cfg) -> dict | None:
    """The config fields importance scores depend on (their cache key), or None if uncacheable."""
    if cfg.name == "none":
        return None
    raise NotImplementedError(cfg.name)


def score(model: torch.nn.Module, cfg, calib: torch.Tensor):
    raise NotImplementedError(cfg.name)


def apply(model: torch.nn.Module, cfg, calib: torch.Tensor, scores) -> dict:
    raise NotImplementedError(cfg.name)


def plan_metrics(model_dir: Path) -> dict:
    """Flat metrics from a pruned model's prune_plan.json."""
    plan = json.loads((Path(model_dir) / "prune_plan.json").read_text())
    out = {"prune/ratio_achieved": plan.get("ratio_achieved")}
    for key in ("num_removed", "removed"):
        if key in plan:
            out[f"prune/{key}"] = plan[key] if not isinstance(plan[key], list) else str(plan[key])
    return out


__all__ = ["importance_fields", "score", "apply", "plan_metrics", "asdict"]

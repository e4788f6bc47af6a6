"""The pipeline's one door into pruning: score (cacheable), apply, and summarise a plan.

Importance scores are cached on disk by the config fields they depend on, never the size: a
ratio sweep scores once. Depth scores are a JSON map block -> score; width scores are tensors,
stored as safetensors (never pickles) next to a JSON header.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harness.pruning import criteria
from harness.pruning.depth import DepthPruneConfig, prune_depth, score_blocks
from harness.pruning.width import WidthPruneConfig, prune_width
from harness.pruning.width_scores import WidthScores, score_groups


def importance_fields(cfg, hf_config) -> dict | None:
    """The config fields the scores depend on (their cache key), or None if not cacheable."""
    if isinstance(cfg, DepthPruneConfig):
        if cfg.iterative or cfg.blocks is not None or cfg.num_to_remove(hf_config) == 0:
            return None
        out = {"method": "depth", "criterion": cfg.criterion, "unit": cfg.unit,
               "protect_first": cfg.protect_first, "protect_last": cfg.protect_last}
        if cfg.criterion == "angular":  # window scores depend on the window size
            out["num_remove"] = cfg.num_to_remove(hf_config)
        if cfg.criterion == "random":
            out["seed"] = cfg.seed
        return out
    if isinstance(cfg, WidthPruneConfig):
        return criteria.cache_fields(cfg)  # each width criterion declares its key fields
    return None


def score(model: torch.nn.Module, cfg, calib: torch.Tensor):
    if isinstance(cfg, DepthPruneConfig):
        return score_blocks(model, cfg, calib)
    return score_groups(model, cfg, calib)


def apply(model: torch.nn.Module, cfg, calib: torch.Tensor, scores=None) -> dict:
    """Prune `model` in place (reusing `scores` if given); returns the JSON-able plan."""
    if isinstance(cfg, DepthPruneConfig):
        return prune_depth(model, cfg, calib, scores=scores)
    if isinstance(cfg, WidthPruneConfig):
        return prune_width(model, cfg, calib, scores=scores)
    raise ValueError(f"prune={cfg.name} changes nothing")


# ---- score persistence ----------------------------------------------------------------------
_TENSOR_MAPS = ("attn", "mlp", "attn_mean_inp", "mlp_mean_inp")


def save_scores(scores, out_dir: Path) -> None:
    if isinstance(scores, WidthScores):
        tensors = {f"{name}.{layer}": t.contiguous().cpu()
                   for name in _TENSOR_MAPS for layer, t in getattr(scores, name).items()}
        header = {f.name: getattr(scores, f.name) for f in fields(scores)
                  if f.name not in _TENSOR_MAPS}
        save_file(tensors, str(out_dir / "scores.safetensors"))
        (out_dir / "scores.json").write_text(json.dumps({"width": header}))
    else:
        (out_dir / "scores.json").write_text(json.dumps({"depth": scores}))


def load_scores(in_dir: Path):
    data = json.loads((in_dir / "scores.json").read_text())
    if "depth" in data:
        return {int(k): v for k, v in data["depth"].items()}
    header = data["width"]
    for stats in ("attn_stats", "mlp_stats"):
        header[stats] = {int(k): tuple(v) for k, v in header[stats].items()}
    scores = WidthScores(**header)
    for name, t in load_file(str(in_dir / "scores.safetensors")).items():
        kind, layer = name.rsplit(".", 1)
        getattr(scores, kind)[int(layer)] = t
    return scores


def plan_metrics(model_dir: Path) -> dict:
    """Flat metrics from a pruned model's prune_plan.json."""
    plan = json.loads((Path(model_dir) / "prune_plan.json").read_text())
    out = {"prune/ratio_achieved": plan["ratio_achieved"]}
    if plan["method"] == "depth":
        out["prune/num_removed"] = plan["num_removed"]
        out["prune/removed"] = str(plan["removed"])
    else:
        out["prune/unit_ratio"] = plan["unit_ratio"]
    return out


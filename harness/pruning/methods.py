"""Pruning methods as a registry: `prune=none|depth|width|hybrid` (and any a plugin adds).

A method's entry names its config class (the `prune` group's schema `<name>_schema`), its
scorer (cacheable importance, computed once per criterion and reused for every size), how it
cuts the model given those scores, and which plan fields become the row's `prune/...` metrics.
`depth.py`, `width.py` and `hybrid.py` register theirs; `none` is here.

Importance scores are cached on disk by `cfg.importance_fields(hf_config)`, never the size:
depth scores are a JSON map block -> score; width scores are tensors, stored as safetensors
(never pickles) next to a JSON header.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harness.keys import Keyed
from harness.registry import Registry


@dataclass
class NoPrune(Keyed):
    """`prune=none`: the dense model."""

    DETERMINING = ("name",)

    name: str = "none"

    def validate(self, hf_config) -> None:  # noqa: ARG002 - same signature as the others
        pass

    def importance_fields(self, hf_config) -> None:  # noqa: ARG002
        return None


@dataclass(frozen=True)
class PruneMethod:
    """score(model, cfg, calib) -> scores; apply(model, cfg, calib, scores) -> JSON-able plan
    (the model cut in place); plan_metrics(plan) -> {"prune/...": value}."""

    name: str
    config: type
    score: Callable | None = None
    apply: Callable | None = None
    plan_metrics: Callable[[dict], dict] = lambda plan: {}


PRUNE_METHODS: Registry[PruneMethod] = Registry(
    "pruning method", "prune", builtins=("harness.pruning.depth", "harness.pruning.width",
                                       "harness.pruning.hybrid"))
PRUNE_METHODS.register(PruneMethod("none", NoPrune))
register = PRUNE_METHODS.register


def plan_metrics(model_dir: Path) -> dict:
    """Flat metrics from a pruned model's prune_plan.json."""
    plan = json.loads((Path(model_dir) / "prune_plan.json").read_text())
    return {"prune/ratio_achieved": plan["ratio_achieved"],
            **PRUNE_METHODS.get(plan["method"]).plan_metrics(plan)}


# ---- score persistence ----------------------------------------------------------------------
_TENSOR_MAPS = ("attn", "mlp", "attn_mean_inp", "mlp_mean_inp")


def save_scores(scores, out_dir: Path) -> None:
    if isinstance(scores, dict):
        (out_dir / "scores.json").write_text(json.dumps({"depth": scores}))
        return
    tensors = {f"{name}.{layer}": t.contiguous().cpu()
               for name in _TENSOR_MAPS for layer, t in getattr(scores, name).items()}
    header = {f.name: getattr(scores, f.name) for f in fields(scores) if f.name not in _TENSOR_MAPS}
    save_file(tensors, str(out_dir / "scores.safetensors"))
    (out_dir / "scores.json").write_text(json.dumps({"width": header}))


def load_scores(in_dir: Path):
    from harness.pruning.importance.width import WidthScores

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


def apply(model: torch.nn.Module, cfg, calib: torch.Tensor, scores=None) -> dict:
    """Prune `model` in place with `cfg`'s method (reusing `scores` if given); the plan."""
    method = PRUNE_METHODS.get(cfg.name)
    if method.apply is None:
        raise ValueError(f"prune={cfg.name} changes nothing")
    return method.apply(model, cfg, calib, scores)


def score(model: torch.nn.Module, cfg, calib: torch.Tensor):
    return PRUNE_METHODS.get(cfg.name).score(model, cfg, calib)

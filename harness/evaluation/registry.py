"""Evaluations as a registry: what each measures on the final model, and what its result depends on.

Every evaluation is one `Evaluation` in `EVALUATIONS`, registered next to the code that measures
(efficiency, speed, ppl, zeroshot). For a run it declares its measurements: {label: the fields
that determine that result} (`ppl` makes one per source, an evaluation that is off makes none).
Each measurement is its own cache entry keyed by those fields and the final model's key, so
adding an evaluation or a source never redoes the others. `metrics` turns a result into the
row's flat metrics, all under the evaluation's own namespace (`ppl/<source>`, `speed/...`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.registry import Registry


@dataclass
class EvalContext:
    """What an evaluation gets: the run's spec, the final model and tokenizer (loaded on first
    use), and the run directory (for files beside the row, such as speed.json)."""

    spec: object
    model: Callable[[], object]
    tokenizer: Callable[[], object]
    run_dir: Path


@dataclass(frozen=True)
class Evaluation:
    """keys(spec) -> {label: determining fields}; run(ctx, label, fields) -> result
    (JSON-able); metrics(label, fields, result) -> {metric: value}; files(ctx, result) writes
    what belongs beside the row (cached or not). `real_weights`: skipped on shape-only models."""

    name: str
    keys: Callable[[object], dict[str, dict]]
    run: Callable[[EvalContext, str, dict], object]
    metrics: Callable[[str, dict, object], dict]
    files: Callable[[EvalContext, object], None] | None = None
    real_weights: bool = True


EVALUATIONS: Registry[Evaluation] = Registry("evaluation", "eval", builtins=(
    "harness.evaluation.efficiency", "harness.evaluation.speed",
    "harness.evaluation.perplexity", "harness.evaluation.zeroshot", "harness.evaluation.engine"))
register = EVALUATIONS.register


def measurements(spec) -> list[tuple[Evaluation, str, dict]]:
    """(evaluation, label, its determining fields) for every measurement `spec` makes."""
    shape_only = spec.model.shape_only
    return [(e, label, fields) for e in EVALUATIONS if not (e.real_weights and shape_only)
            for label, fields in e.keys(spec).items()]

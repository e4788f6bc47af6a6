"""Run a recovery method: the token budget in optimizer steps, its phases in order, one loss curve.

`recover(model, cfg, train_ids, out_dir)` returns the recovered plain model (LoRA merged) and
metrics. The budget is in tokens: each optimizer step consumes
seq_len * batch_size * grad_accum * world_size tokens, so equal budgets give equal token counts
across methods. `out_dir` holds the run's state: one directory per phase with its checkpoints and
loss curve, plus a combined `train_log.csv`; re-running with the same `out_dir` resumes.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import torch

from harness.distributed import on_main, world_size
from harness.recovery.config import RecoverConfig
from harness.recovery.data import CyclicDataset, load_examples
from harness.recovery.registry import METHODS, PhaseContext
from harness.recovery.trainer import LOG_NAME, read_log


def phases(cfg: RecoverConfig) -> list[str]:
    """The method's training phases in order: [] for none, ['cpt', 'lora'] for cpt_lora."""
    return [p.name for p in METHODS.get(cfg.name).phases]


def step_tokens(cfg: RecoverConfig, world: int = 1) -> int:
    """Tokens one optimizer step consumes."""
    return cfg.seq_len * cfg.batch_size * cfg.grad_accum * world


def min_tokens(cfg: RecoverConfig, world: int = 1) -> int:
    """The smallest budget: one optimizer step per phase (cpt_lora has two)."""
    return step_tokens(cfg, world) * len(phases(cfg))


def phase_steps(cfg: RecoverConfig, world: int = 1) -> list[tuple[str, int]]:
    """[(phase, optimizer steps)]: the token budget in whole steps, so the tokens trained are
    within one step below the budget, split among the phases by the method. A budget below
    `min_tokens` raises; a method without phases (none) has no steps."""
    method = METHODS.get(cfg.name)
    if not method.phases:
        return []
    if cfg.tokens < min_tokens(cfg, world):
        raise ValueError(f"recover.tokens={cfg.tokens} is less than one optimizer step per phase"
                         f" ({step_tokens(cfg, world)} tokens): use at least {min_tokens(cfg, world)}")
    steps = method.split(cfg, cfg.tokens // step_tokens(cfg, world))
    return [(p.name, n) for p, n in zip(method.phases, steps, strict=True)]


def _combine_logs(out: Path, names: list[str]) -> None:
    """One loss curve over all phases: steps and tokens continue across phase boundaries."""
    step0 = tokens0 = 0
    with (out / LOG_NAME).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "lr", "tokens_seen", "phase"])
        for phase in names:
            rows = read_log(out / phase / LOG_NAME)
            for r in rows:
                writer.writerow([step0 + int(r["step"]), r["loss"], r["lr"],
                                 tokens0 + int(r["tokens_seen"]), phase])
            if rows:
                step0 += int(rows[-1]["step"])
                tokens0 += int(rows[-1]["tokens_seen"])


def recover(
    model,
    cfg: RecoverConfig,
    train_ids: torch.Tensor | None,
    out_dir: str | Path,
    teacher=None,
    tokenizer=None,
    report_to: str | list[str] = "none",
    callbacks=(),
) -> tuple[torch.nn.Module, dict]:
    """Recover `model` with method `cfg.name` on `cfg.tokens` training tokens.

    `train_ids`: a 1-D token stream to train on (None: `cfg.data`, read with `tokenizer`); a
    method that needs a teacher gets `teacher`. Extra `callbacks` go to every phase's Trainer.
    Returns (plain model in eval mode, {'recover/...': value}); for 'none' the model comes back
    unchanged with {}.
    """
    cfg.validate()
    method = METHODS.get(cfg.name)
    if not method.phases:
        return model, {}
    if "teacher" in method.needs and teacher is None:
        raise ValueError(f"recover={cfg.name} needs the dense teacher model")
    start = time.perf_counter()
    out = Path(out_dir)
    world = world_size()
    plan = phase_steps(cfg, world)
    per_step = cfg.batch_size * cfg.grad_accum * world  # examples per optimizer step
    budget = sum(steps for _, steps in plan) * per_step * cfg.seq_len
    examples = load_examples(cfg.data, cfg.seq_len, train_ids, tokenizer, max_tokens=budget)
    metrics: dict[str, float] = {"recover/budget_tokens": cfg.tokens, "recover/world_size": world,
                                 "recover/global_batch": per_step}
    first = 0
    for phase, (name, steps) in zip(method.phases, plan, strict=True):
        dataset = CyclicDataset(examples, start=first, count=steps * per_step)
        first += steps * per_step
        ctx = PhaseContext(cfg, dataset, out / name, steps, report_to, list(callbacks), teacher)
        model, phase_metrics = phase.run(model, ctx)
        metrics.update({f"recover/{name}/{k}": v for k, v in phase_metrics.items()})
    names = [name for name, _ in plan]
    on_main(lambda: _combine_logs(out, names))
    # this run's wall time plus the training time earlier attempts left in their checkpoints
    prior = sum(metrics[f"recover/{p}/prior_time_s"] for p in names)
    elapsed = time.perf_counter() - start + prior
    tokens_seen = sum(metrics[f"recover/{p}/tokens_seen"] for p in names)
    metrics.update({
        "recover/tokens_seen": tokens_seen,
        "recover/steps": sum(metrics[f"recover/{p}/steps"] for p in names),
        "recover/first_loss": metrics[f"recover/{names[0]}/first_loss"],
        "recover/final_loss": metrics[f"recover/{names[-1]}/final_loss"],
        "recover/time_s": elapsed,
        "recover/tokens_per_s": tokens_seen / max(elapsed, 1e-9),
    })
    return model, metrics

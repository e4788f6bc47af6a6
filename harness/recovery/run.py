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

from harness.data.text import token_ids
from harness.distributed import on_main, world_size
from harness.recovery.config import RecoverConfig
from harness.recovery.corpus import PackedCorpus, prepare
from harness.recovery.data import CyclicDataset, load_examples, pack
from harness.recovery.registry import METHODS, PhaseContext
from harness.recovery.trainer import EVAL_FIELDS, EVAL_LOG, LOG_NAME, read_log


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


def _combine_eval_logs(out: Path, totals: list[tuple[str, int, int]]) -> None:
    """One held-out curve over all phases (`eval_log.csv`), steps and tokens continued."""
    step0 = tokens0 = 0
    rows = []
    for phase, steps, tokens in totals:
        for r in read_log(out / phase / EVAL_LOG, EVAL_FIELDS):
            rows.append([step0 + int(r["step"]), tokens0 + int(r["tokens_seen"]), r["eval_loss"],
                         r["eval_ppl"], phase])
        step0, tokens0 = step0 + steps, tokens0 + tokens
    if rows:
        with (out / EVAL_LOG).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*EVAL_FIELDS, "phase"])
            writer.writerows(rows)


def repetition(cfg: RecoverConfig, corpus_tokens: int, world: int = 1) -> tuple[float, str]:
    """(epochs, one-line refusal or ''): how many times the budget reads the corpus's
    `recover.seq_len` blocks, and the refusal when that is above 1 without recover.epochs_ok."""
    blocks = corpus_tokens // cfg.seq_len
    need = sum(steps for _, steps in phase_steps(cfg, world)) * cfg.batch_size * cfg.grad_accum \
        * world
    epochs = need / max(blocks, 1)
    if epochs <= 1 or cfg.epochs_ok:
        return epochs, ""
    return epochs, (f"recover.tokens={cfg.tokens} is above the corpus: recover.data={cfg.data} "
                    f"holds {corpus_tokens} tokens ({blocks * cfg.seq_len} in blocks of "
                    f"recover.seq_len={cfg.seq_len}), so training would read it {epochs:.2f} "
                    f"times: lower recover.tokens to at most {blocks * cfg.seq_len} or set "
                    "recover.epochs_ok=true")


def training_examples(cfg: RecoverConfig, train_ids=None, tokenizer=None, cache=None):
    """The packed training blocks: `train_ids` or an Alpaca .json in memory; any text corpus
    (wiki_train, files, shards, the hub) as a view of its cached memory-mapped token file."""
    if train_ids is not None or str(cfg.data).endswith(".json"):
        return load_examples(cfg.data, cfg.seq_len, train_ids, tokenizer)
    if tokenizer is None:
        raise ValueError(f"recover.data={cfg.data!r} needs a tokenizer")
    if cache is None:
        from harness.assets import cache_root
        from harness.cache.store import StageCache

        cache = StageCache(cache_root() / "stages")
    return PackedCorpus(prepare(cfg, tokenizer, cache).ids(), cfg.seq_len)


def held_out(cfg: RecoverConfig, tokenizer):
    """`recover.eval_tokens` of `recover.eval_data` in whole windows of recover.seq_len."""
    windows = max(1, cfg.eval_tokens // cfg.seq_len)
    ids = token_ids(cfg.eval_data, tokenizer)[: windows * cfg.seq_len]
    return pack(ids, cfg.seq_len)


def recover(
    model,
    cfg: RecoverConfig,
    train_ids: torch.Tensor | None,
    out_dir: str | Path,
    teacher=None,
    tokenizer=None,
    report_to: str | list[str] = "none",
    callbacks=(),
    cache=None,
) -> tuple[torch.nn.Module, dict]:
    """Recover `model` with method `cfg.name` on `cfg.tokens` training tokens.

    `train_ids`: a 1-D token stream to train on (None: `cfg.data`, read with `tokenizer`); a
    method that needs a teacher gets `teacher`. Extra `callbacks` go to every phase's Trainer.
    `cache`: the StageCache holding prepared corpora (default: the harness cache's).
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
    examples = training_examples(cfg, train_ids, tokenizer, cache)
    corpus_tokens = getattr(examples, "tokens", len(examples) * cfg.seq_len)
    epochs, refusal = repetition(cfg, corpus_tokens, world)
    if refusal:
        raise ValueError(refusal)
    if cfg.eval_every and tokenizer is None:
        raise ValueError("recover.eval_every needs a tokenizer for recover.eval_data")
    held = held_out(cfg, tokenizer) if cfg.eval_every else None
    metrics: dict[str, float] = {"recover/budget_tokens": cfg.tokens, "recover/world_size": world,
                                 "recover/global_batch": per_step, "recover/epochs": epochs,
                                 "recover/corpus_tokens": corpus_tokens,
                                 "recover/trained_tokens": budget}
    first = 0
    for phase, (name, steps) in zip(method.phases, plan, strict=True):
        dataset = CyclicDataset(examples, start=first, count=steps * per_step)
        first += steps * per_step
        ctx = PhaseContext(cfg, dataset, out / name, steps, report_to, list(callbacks), teacher,
                           eval_dataset=held)
        model, phase_metrics = phase.run(model, ctx)
        metrics.update({f"recover/{name}/{k}": v for k, v in phase_metrics.items()})
    names = [name for name, _ in plan]
    on_main(lambda: _combine_logs(out, names))
    totals = [(n, metrics[f"recover/{n}/steps"], metrics[f"recover/{n}/tokens_seen"])
              for n in names]
    on_main(lambda: _combine_eval_logs(out, totals))
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

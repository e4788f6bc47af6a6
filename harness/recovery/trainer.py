"""Shared HF `Trainer` wiring for every recovery phase: arguments, resume, guard rails, loss log.

One phase = one `Trainer` run in its own directory (`<out_dir>/<phase>`), so the same code runs
on CPU, one GPU or many (`accelerate launch`). Checkpoints are marked `COMPLETE` only after the
Trainer finished writing them, and then every older checkpoint is deleted, so a phase keeps only
its last complete checkpoint (weights and optimizer state) and never a moment with none. Saves
come every `recover.save_minutes` of wall time (and every `recover.save_steps` steps when set);
a restarted run resumes from the newest complete one and deletes incomplete ones. Each marker also records the training seconds spent up to that checkpoint, so a
resumed phase reports the time of all the work it kept, not only the part after the restart.
A non-finite loss raises `NonFiniteLossError` before that step can be saved.
"""

from __future__ import annotations

import csv
import math
import re
import shutil
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

from harness.distributed import barrier, on_main, world_size
from harness.recovery.fsdp import fsdp_arguments, gather_plain, meta_copy

MARKER = "COMPLETE"
LOG_NAME = "train_log.csv"
LOG_FIELDS = ("step", "loss", "lr", "tokens_seen")
EVAL_LOG = "eval_log.csv"  # held-out PPL every recover.eval_every tokens
EVAL_FIELDS = ("step", "tokens_seen", "eval_loss", "eval_ppl")
SCHEDULERS = {"cosine": "cosine", "constant": "constant_with_warmup", "wsd": "warmup_stable_decay"}
_CKPT = re.compile(r"^checkpoint-(\d+)$")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the message names the step and the last good checkpoint."""


def use_bf16(cfg) -> bool:
    """bf16 mixed precision: `auto` means on GPU only."""
    choice = str(cfg.bf16).lower()
    return torch.cuda.is_available() if choice == "auto" else choice == "true"


def checkpoints(run_dir: str | Path) -> list[tuple[int, Path, bool]]:
    """(step, path, complete) for each `checkpoint-N` in `run_dir`, oldest first."""
    run_dir = Path(run_dir)
    found = []
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            match = _CKPT.match(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path, (path / MARKER).exists()))
    return sorted(found)


def last_complete_checkpoint(run_dir: str | Path) -> Path | None:
    complete = [path for _, path, ok in checkpoints(run_dir) if ok]
    return complete[-1] if complete else None


def prepare_resume(run_dir: str | Path) -> Path | None:
    """Delete incomplete checkpoints and return the newest complete one; decided on rank 0, so
    every rank resumes from the same step."""

    def decide():
        for _, path, ok in checkpoints(run_dir):
            if not ok:
                shutil.rmtree(path, ignore_errors=True)
        return last_complete_checkpoint(run_dir)

    return on_main(decide)


def read_log(path: str | Path, names=LOG_FIELDS) -> list[dict[str, float]]:
    """Rows of a `train_log.csv` (or `eval_log.csv`: names=EVAL_FIELDS) as floats ([] when
    there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if k in names} for row in csv.DictReader(f)]


def truncate_log(path: Path, last_step: int, names=LOG_FIELDS) -> None:
    """Keep only rows up to `last_step` (the checkpoint a run resumes from); none for a fresh run."""
    rows = [r for r in read_log(path, names) if r["step"] <= last_step]
    path.unlink(missing_ok=True)
    if rows:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            writer.writerows(
                {**r, "step": int(r["step"]), "tokens_seen": int(r["tokens_seen"])} for r in rows
            )


def checkpoint_time(path: str | Path) -> float:
    """Training seconds recorded in a complete checkpoint's marker (0.0 if none recorded)."""
    for line in (Path(path) / MARKER).read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "time_s":
            return float(value)
    return 0.0


class CompletionMarker(TrainerCallback):
    """Writes `COMPLETE` (step, training seconds so far) into a checkpoint once the Trainer has
    finished saving it, then deletes every older checkpoint (the last complete one is all a
    resume needs); `prior_s` is the time recorded by the checkpoint this run resumed from."""

    def __init__(self, prior_s: float = 0.0):
        self.prior_s, self.start = prior_s, time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        barrier()  # every rank has written its part (RNG state, FSDP shards) before the marker
        if state.is_world_process_zero and path.is_dir():
            spent = self.prior_s + time.perf_counter() - self.start
            (path / MARKER).write_text(f"step {state.global_step}\ntime_s {spent:.3f}\n")
            for step, older, _ in checkpoints(args.output_dir):
                if step < state.global_step:
                    shutil.rmtree(older, ignore_errors=True)


class SaveEvery(TrainerCallback):
    """Asks the Trainer for a checkpoint once `minutes` of wall time have passed since the
    phase began or last saved (rank 0's clock decides, so every rank saves at the same step)."""

    def __init__(self, minutes: float):
        self.seconds, self.last = 60.0 * minutes, time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if on_main(lambda: time.monotonic() - self.last >= self.seconds):
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last = time.monotonic()


def _append(path: Path, header, row) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(header)
        writer.writerow(row)


class LossLog(TrainerCallback):
    """Appends step, loss, lr and tokens_seen to a CSV at every logging step, and each held-out
    evaluation's loss and PPL to `eval_log.csv` beside it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "eval_loss" in logs:
            _append(self.path.parent / EVAL_LOG, EVAL_FIELDS, [
                state.global_step, state.num_input_tokens_seen, logs["eval_loss"],
                logs["eval_ppl"]])
        if "loss" in logs:
            lr = logs.get("learning_rate", float("nan"))
            _append(self.path, LOG_FIELDS,
                    [state.global_step, logs["loss"], lr, state.num_input_tokens_seen])


class EvalAtEnd(TrainerCallback):
    """A held-out evaluation after the last step too, when it is not a multiple of eval_steps."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == state.max_steps and state.global_step % args.eval_steps:
            control.should_evaluate = True
        return control


class RecoveryTrainer(Trainer):
    """`Trainer` that stops on the first non-finite loss, before that step is saved, reads the
    corpus in order when `recover.shuffle=false`, and logs the held-out PPL with its loss."""

    def _get_train_sampler(self, train_dataset=None):
        if getattr(self, "in_order", False):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)
        return super()._get_train_sampler(train_dataset)

    def log(self, logs, *args, **kwargs):
        if "eval_loss" in logs:
            logs["eval_ppl"] = math.exp(min(logs["eval_loss"], 700.0))
        return super().log(logs, *args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            step = self.state.global_step + 1
            last = last_complete_checkpoint(self.args.output_dir)
            raise NonFiniteLossError(
                f"non-finite loss {loss.item()} at step {step}; last good checkpoint: {last}"
            )
        return loss


def schedule_args(cfg, max_steps: int) -> dict:
    """`recover.schedule`: cosine after warmup, warmup-stable-decay (the last `decay_ratio` of
    the steps decay, cosine, to 0), or constant after warmup."""
    out = {"lr_scheduler_type": SCHEDULERS[cfg.schedule]}
    if cfg.schedule == "wsd":
        out["lr_scheduler_kwargs"] = {"num_decay_steps": max(1, round(cfg.decay_ratio * max_steps))}
    return out


def training_args(
    cfg, out_dir: str | Path, *, lr: float, max_steps: int, report_to: str | list[str] = "none",
    eval_steps: int = 0, eval_on_start: bool = False,
) -> TrainingArguments:
    """AdamW (fused on CUDA), warmup + cosine, bf16 on GPU; checkpoints every `save_steps`
    steps when set (else only on `SaveEvery`'s clock), the last complete one kept
    (`CompletionMarker` deletes older ones after marking the new one; `save_total_limit` would
    delete them before the new one is marked, leaving a moment with no complete checkpoint)."""
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(out_dir),
        run_name=Path(out_dir).name,
        max_steps=max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        **schedule_args(cfg, max_steps),
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps or None,
        # the curve's first point (0 tokens), inside train() once the model is wrapped: an
        # evaluate() before train() would leave DDP unwrapped and its ranks unsynchronised
        eval_on_start=eval_on_start,
        per_device_eval_batch_size=cfg.batch_size,
        prediction_loss_only=True,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of max_steps
        max_grad_norm=cfg.max_grad_norm,
        bf16=use_bf16(cfg),
        use_cpu=not cuda,
        # non-reentrant by default; under FSDP its own activation checkpointing does this
        activation_checkpointing=cfg.gradient_checkpointing and cfg.fsdp == "none",
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or None,
        save_total_limit=None,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps or max(1, max_steps // 200),
        include_num_input_tokens_seen="non_padding",
        report_to=report_to,
        disable_tqdm=cfg.disable_tqdm,
        seed=cfg.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        remove_unused_columns=False,
        **fsdp_arguments(cfg),
    )


def train_phase(
    model,
    dataset,
    out_dir: str | Path,
    cfg,
    *,
    lr: float,
    max_steps: int,
    report_to: str | list[str] = "none",
    callbacks=(),
    trainer_cls=RecoveryTrainer,
    eval_dataset=None,
    **trainer_kwargs,
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Train `model` in place for `max_steps` optimizer steps, resuming from `out_dir` if a
    complete checkpoint is there. Returns (model, metrics): the trained model (a plain copy when
    FSDP sharded the original) and tokens_seen, steps, first/final loss, time_s (training seconds
    over every attempt, up to the checkpoint resumed from plus this run) and prior_time_s."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume = prepare_resume(out)
    prior = checkpoint_time(resume) if resume else 0.0
    log_path = out / LOG_NAME
    resumed = int(_CKPT.match(resume.name).group(1)) if resume else 0
    on_main(lambda: truncate_log(log_path, resumed))
    on_main(lambda: truncate_log(out / EVAL_LOG, resumed, EVAL_FIELDS))
    eval_steps = 0
    if eval_dataset is not None and cfg.eval_every:
        per_step = cfg.seq_len * cfg.batch_size * cfg.grad_accum * world_size()
        eval_steps = max(1, cfg.eval_every // per_step)
    half = (torch.bfloat16, torch.float16)
    dtype = next(model.parameters()).dtype
    upcast = any(p.requires_grad and p.dtype in half for p in model.parameters())
    if upcast:
        model.float()  # fp32 master weights; bf16 compute comes from autocast
    skeleton = meta_copy(model) if cfg.fsdp != "none" else None
    trainer = trainer_cls(
        model=model,
        args=training_args(cfg, out, lr=lr, max_steps=max_steps, report_to=report_to,
                           eval_steps=eval_steps, eval_on_start=bool(eval_steps) and not resume),
        train_dataset=dataset,
        eval_dataset=eval_dataset if eval_steps else None,
        data_collator=default_data_collator,
        callbacks=[CompletionMarker(prior), LossLog(log_path),
                   *([SaveEvery(cfg.save_minutes)] if cfg.save_minutes > 0 else []),
                   *([EvalAtEnd()] if eval_steps else []), *callbacks],
        **trainer_kwargs,
    )
    trainer.in_order = not cfg.shuffle
    if skeleton is not None and not trainer.is_fsdp_enabled:
        raise RuntimeError(f"recover.fsdp={cfg.fsdp}: accelerate did not enable FSDP here")
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    elapsed = time.perf_counter() - start
    if skeleton is not None:
        model = gather_plain(trainer.model, skeleton)
    elif cfg.gradient_checkpointing and hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    if upcast:
        model.to(dtype)
    model.eval()
    rows = on_main(lambda: read_log(log_path))
    return model, {
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "steps": int(trainer.state.global_step),
        "first_loss": rows[0]["loss"] if rows else math.nan,
        "final_loss": rows[-1]["loss"] if rows else math.nan,
        "time_s": prior + elapsed,
        "prior_time_s": prior,
        "resumed_from_step": int(_CKPT.match(resume.name).group(1)) if resume else 0,
        "parallel": trainer.accelerator.distributed_type.value,  # NO, MULTI_GPU, FSDP, ...
    }

"""`RecoverConfig`: the settings every recovery method shares (the `recover` config group).

Each method (harness/recovery/methods/) subclasses it with the fields only it reads (LoRA's
rank, KD's temperature) and registers itself; its class's determining fields are exactly what
determine its result. `recover=none` is this base class: nothing runs, and its key is the name
alone. The budget is `tokens`; `lr` is not here, since LoRA has its own `lora_lr`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from harness.keys import Keyed

DATA_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
SCHEDULES = ("cosine", "wsd", "constant")
# fields added after results were cached: left out of the key at these values, so every key
# from before them is unchanged (eval_* only matter when eval_every > 0, decay_ratio for wsd)
LATER_DEFAULTS = {"data_config": None, "split": "train", "text_field": "text",
                  "schedule": "cosine", "shuffle": True}
EVAL_FIELDS = ("eval_every", "eval_data", "eval_tokens")
TEMPLATES = ("alpaca",)
BF16_CHOICES = ("auto", "true", "false")
FSDP_MODES = ("none", "full_shard", "shard_grad_op")


@dataclass
class RecoverConfig(Keyed):
    """Token budget, optimiser and data settings of every method. `validate()` checks them."""

    DETERMINING = ("name", "tokens", "seq_len", "batch_size", "grad_accum", "weight_decay",
                   "adam_beta1", "adam_beta2", "warmup_ratio", "max_grad_norm", "data",
                   "prompt_template", "seed", "bf16", "data_config", "split", "text_field",
                   "schedule", "decay_ratio", "shuffle", *EVAL_FIELDS)
    NOT_DETERMINING = ("epochs_ok", "gradient_checkpointing", "save_minutes", "save_steps", "logging_steps",
                       "disable_tqdm", "fsdp", "fsdp_offload")

    name: str = "none"
    tokens: int = 1_000_000  # training-token budget (shared between phases for cpt_lora)
    seq_len: int = 128
    batch_size: int = 8  # per device
    grad_accum: int = 1
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    warmup_ratio: float = 0.03  # linear warmup, then cosine decay
    max_grad_norm: float = 1.0
    data: str = "wiki_train"  # or a .txt/.jsonl/.parquet file, directory or glob; Alpaca
    # .json; or hf:NAME (a hub dataset, with data_config / split / text_field)
    data_config: str | None = None  # hub dataset config
    split: str = "train"  # hub dataset split
    text_field: str = "text"  # the column holding the text (.jsonl, .parquet, hub)
    epochs_ok: bool = False  # allow a budget above the corpus (it then repeats)
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay) | constant (after warmup)
    decay_ratio: float = 0.2  # wsd: share of the steps in the final (cosine) decay
    shuffle: bool = True  # the Trainer's seeded shuffle of the budget; false: corpus order
    eval_every: int = 0  # held-out PPL every N training tokens (0: none); eval_log.csv
    eval_data: str = "c4_calib"  # held-out text for it (protocol v1.1); never a test split
    eval_tokens: int = 4096  # tokens of eval_data scored each time (whole windows)
    prompt_template: str = "alpaca"
    seed: int = 0
    bf16: str = "auto"  # auto = bf16 mixed precision on GPU, fp32 on CPU; or true / false
    gradient_checkpointing: bool = False
    save_minutes: float = 30.0  # a checkpoint every N minutes of wall time (0: none by time)
    save_steps: int = 0  # also one every N optimizer steps (0: by time only)
    logging_steps: int = 0  # 0 = auto: about 200 rows in the loss curve
    disable_tqdm: bool = False
    # FSDP (harness.recovery.fsdp): how training is spread over the processes, not what it
    # computes (equal curves up to float rounding), so not determining
    fsdp: str = "none"  # none | full_shard | shard_grad_op
    fsdp_offload: bool = False  # sharded params, grads and optimizer state on the CPU

    def key_fields(self) -> dict:
        """Only the name when recovery is off; the training text by what it holds."""
        if self.name == "none":
            return {"name": "none"}
        from harness.recovery.corpus import corpus_identity

        out = {**super().key_fields(), "data": corpus_identity(self)}
        for name, default in LATER_DEFAULTS.items():  # None: a row from before the field
            if out[name] in (default, None):
                del out[name]
        if self.schedule != "wsd":
            del out["decay_ratio"]
        if not self.eval_every:
            for name in EVAL_FIELDS:
                del out[name]
        return out

    def checks(self) -> list[tuple[bool, str]]:
        """(ok, one-line message) for every value; subclasses add their own fields' checks."""
        return [
            (self.name == "none" or self.tokens > 0,
             f"recover.tokens must be > 0 for recover={self.name}, got {self.tokens}"),
            (self.seq_len >= 2, f"recover.seq_len must be >= 2, got {self.seq_len}"),
            (self.batch_size >= 1, f"recover.batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"recover.grad_accum must be >= 1, got {self.grad_accum}"),
            (self.weight_decay >= 0, f"recover.weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1,
             f"recover.adam_beta1/2 must be in [0, 1), got {self.adam_beta1}, {self.adam_beta2}"),
            (0 <= self.warmup_ratio < 1,
             f"recover.warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.max_grad_norm >= 0,
             f"recover.max_grad_norm must be >= 0, got {self.max_grad_norm}"),
            (self.data not in ("wiki_test", "c4_test"),
             f"recover.data={self.data} is a test split: never train on it (wiki_train, or a "
             "file of yours)"),
            (self.data == "wiki_train" or str(self.data).startswith("hf:")
             or str(self.data).endswith(DATA_SUFFIXES) or os.path.isdir(self.data)
             or any(c in str(self.data) for c in "*?["),
             f"recover.data must be wiki_train, a {'/'.join(DATA_SUFFIXES)} file, a directory "
             f"or glob of shards, or hf:NAME, got {self.data!r}"),
            (self.schedule in SCHEDULES,
             f"recover.schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
            (0 < self.decay_ratio <= 1,
             f"recover.decay_ratio must be in (0, 1], got {self.decay_ratio}"),
            (self.eval_every >= 0, f"recover.eval_every must be >= 0, got {self.eval_every}"),
            (self.eval_tokens >= 1, f"recover.eval_tokens must be >= 1, got {self.eval_tokens}"),
            (self.eval_data not in ("wiki_test", "c4_test"),
             f"recover.eval_data={self.eval_data} is a test split: the curve must not see the "
             "final rows' text (c4_calib, or a held-out file of yours)"),
            (not self.eval_every or self.eval_data != self.data,
             f"recover.eval_data={self.eval_data} is the training corpus: the curve needs "
             "held-out text (c4_calib, or a slice of your corpus kept out of recover.data)"),
            (self.prompt_template in TEMPLATES,
             f"recover.prompt_template must be one of {TEMPLATES}, got {self.prompt_template!r}"),
            (self.save_steps >= 0, f"recover.save_steps must be >= 0, got {self.save_steps}"),
            (self.save_minutes >= 0, f"recover.save_minutes must be >= 0, got {self.save_minutes}"),
            (self.logging_steps >= 0,
             f"recover.logging_steps must be >= 0, got {self.logging_steps}"),
            (str(self.bf16).lower() in BF16_CHOICES,
             f"recover.bf16 must be one of {BF16_CHOICES}, got {self.bf16!r}"),
            (self.fsdp in FSDP_MODES, f"recover.fsdp must be one of {FSDP_MODES}, got {self.fsdp!r}"),
            (self.fsdp != "none" or not self.fsdp_offload,
             "recover.fsdp_offload=true needs recover.fsdp=full_shard or shard_grad_op"),
            (self.fsdp == "none" or (torch.cuda.is_available() and "LOCAL_RANK" in os.environ),
             f"recover.fsdp={self.fsdp} needs GPUs and a distributed launch (torchrun, "
             "accelerate launch or SLURM tasks, one process is enough): accelerate shards "
             "only multi-GPU runs and would silently train unsharded"),
        ]

    def validate(self) -> None:
        """Raise ValueError with one clear line for the first bad value."""
        for ok, message in self.checks():
            if not ok:
                raise ValueError(message)

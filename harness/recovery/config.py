"""`RecoverConfig`: how a pruned model is retrained (the `recover` config group).

Plain fields with defaults so Hydra can compose into it. Methods:
  none      leave the model as it is
  lora      LoRA adapters (peft) on `lora_targets`, merged into the weights afterwards
  cpt       full-parameter continued pretraining (Shortened LLaMA recipe)
  cpt_lora  CPT for `cpt_fraction` of the budget, then LoRA for the rest
  kd        CPT with a logit-distillation loss from the dense teacher (Minitron recipe)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from harness.keys import Keyed
from harness.models.adapters.base import LLAMA_PROJECTIONS

METHODS = ("none", "lora", "cpt", "cpt_lora", "kd")
DATA_SUFFIXES = (".txt", ".jsonl", ".json")
TEMPLATES = ("alpaca",)
BF16_CHOICES = ("auto", "true", "false")
FSDP_MODES = ("none", "full_shard", "shard_grad_op")


@dataclass
class RecoverConfig(Keyed):
    """Recovery method, token budget and optimiser settings. `validate()` checks every value."""

    DETERMINING = ("name", "tokens", "cpt_fraction", "seq_len", "batch_size", "grad_accum", "lr",
                   "lora_lr", "weight_decay", "adam_beta1", "adam_beta2", "warmup_ratio",
                   "max_grad_norm", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
                   "kd_temperature", "kd_alpha", "data", "prompt_template", "seed", "bf16")
    NOT_DETERMINING = ("gradient_checkpointing", "save_minutes", "save_steps", "logging_steps",
                       "disable_tqdm",
                       "fsdp", "fsdp_offload")
    # determining fields that only some methods read; every other one applies to all methods
    USED_BY: ClassVar[dict[str, tuple[str, ...]]] = {
        "cpt_fraction": ("cpt_lora",),
        "lr": ("cpt", "cpt_lora", "kd"),
        **dict.fromkeys(("lora_lr", "lora_r", "lora_alpha", "lora_dropout", "lora_targets"),
                        ("lora", "cpt_lora")),
        **dict.fromkeys(("kd_temperature", "kd_alpha"), ("kd",)),
    }

    name: str = "none"
    tokens: int = 0  # training-token budget (shared between phases for cpt_lora)
    cpt_fraction: float = 0.5  # share of the budget spent on CPT in cpt_lora
    seq_len: int = 128
    batch_size: int = 8  # per device
    grad_accum: int = 1
    lr: float = 1e-4  # cpt / kd learning rate
    lora_lr: float = 1e-4
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    warmup_ratio: float = 0.03  # linear warmup, then cosine decay
    max_grad_norm: float = 1.0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    # in Llama's vocabulary; each family's adapter maps them onto its modules (Phi-3: fused qkv)
    lora_targets: list[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))
    kd_temperature: float = 1.0
    kd_alpha: float = 1.0  # loss = kd_alpha * KD + (1 - kd_alpha) * LM
    data: str = "wiki_train"  # or a path to .txt / .jsonl / Alpaca .json
    prompt_template: str = "alpaca"
    gradient_checkpointing: bool = False
    save_minutes: float = 30.0  # a checkpoint every N minutes of wall time (0: none by time)
    save_steps: int = 0  # also one every N optimizer steps (0: by time only)
    logging_steps: int = 0  # 0 = auto: about 200 rows in the loss curve
    seed: int = 0
    bf16: str = "auto"  # auto = bf16 mixed precision on GPU, fp32 on CPU; or true / false
    disable_tqdm: bool = False
    # FSDP (harness.recovery.fsdp): how training is spread over the processes, not what it
    # computes (equal curves up to float rounding), so not determining
    fsdp: str = "none"  # none | full_shard | shard_grad_op
    fsdp_offload: bool = False  # sharded params, grads and optimizer state on the CPU

    def key_fields(self) -> dict:
        """Only the name when recovery is off; otherwise no other method's settings."""
        if self.name == "none":
            return {"name": "none"}
        return {k: v for k, v in super().key_fields().items()
                if self.name in self.USED_BY.get(k, (self.name,))}

    def validate(self) -> None:
        """Raise ValueError with one clear line for the first bad value."""
        checks = [
            (self.name in METHODS, f"recover.name must be one of {METHODS}, got {self.name!r}"),
            (
                self.name == "none" or self.tokens > 0,
                f"recover.tokens must be > 0 for recover.name={self.name}, got {self.tokens}",
            ),
            (
                0.0 < self.cpt_fraction < 1.0,
                f"recover.cpt_fraction must be in (0, 1), got {self.cpt_fraction}",
            ),
            (self.seq_len >= 2, f"recover.seq_len must be >= 2, got {self.seq_len}"),
            (self.batch_size >= 1, f"recover.batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"recover.grad_accum must be >= 1, got {self.grad_accum}"),
            (self.lr > 0, f"recover.lr must be > 0, got {self.lr}"),
            (self.lora_lr > 0, f"recover.lora_lr must be > 0, got {self.lora_lr}"),
            (self.weight_decay >= 0, f"recover.weight_decay must be >= 0, got {self.weight_decay}"),
            (
                0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1,
                f"recover.adam_beta1/2 must be in [0, 1), got {self.adam_beta1}, {self.adam_beta2}",
            ),
            (
                0 <= self.warmup_ratio < 1,
                f"recover.warmup_ratio must be in [0, 1), got {self.warmup_ratio}",
            ),
            (
                self.max_grad_norm >= 0,
                f"recover.max_grad_norm must be >= 0, got {self.max_grad_norm}",
            ),
            (self.lora_r >= 1, f"recover.lora_r must be >= 1, got {self.lora_r}"),
            (self.lora_alpha > 0, f"recover.lora_alpha must be > 0, got {self.lora_alpha}"),
            (
                0 <= self.lora_dropout < 1,
                f"recover.lora_dropout must be in [0, 1), got {self.lora_dropout}",
            ),
            (len(self.lora_targets) > 0, "recover.lora_targets must name at least one module"),
            (
                self.kd_temperature > 0,
                f"recover.kd_temperature must be > 0, got {self.kd_temperature}",
            ),
            (0 <= self.kd_alpha <= 1, f"recover.kd_alpha must be in [0, 1], got {self.kd_alpha}"),
            (
                self.data == "wiki_train" or str(self.data).endswith(DATA_SUFFIXES),
                f"recover.data must be wiki_train or a {'/'.join(DATA_SUFFIXES)} path, got {self.data!r}",
            ),
            (
                self.prompt_template in TEMPLATES,
                f"recover.prompt_template must be one of {TEMPLATES}, got {self.prompt_template!r}",
            ),
            (self.save_steps >= 0, f"recover.save_steps must be >= 0, got {self.save_steps}"),
            (
                self.save_minutes >= 0,
                f"recover.save_minutes must be >= 0, got {self.save_minutes}",
            ),
            (
                self.logging_steps >= 0,
                f"recover.logging_steps must be >= 0, got {self.logging_steps}",
            ),
            (
                str(self.bf16).lower() in BF16_CHOICES,
                f"recover.bf16 must be one of {BF16_CHOICES}, got {self.bf16!r}",
            ),
            (self.fsdp in FSDP_MODES, f"recover.fsdp must be one of {FSDP_MODES}, got {self.fsdp!r}"),
            (
                self.fsdp != "none" or not self.fsdp_offload,
                "recover.fsdp_offload=true needs recover.fsdp=full_shard or shard_grad_op",
            ),
            (
                self.fsdp == "none" or (torch.cuda.is_available() and "LOCAL_RANK" in os.environ),
                f"recover.fsdp={self.fsdp} needs GPUs and a distributed launch (torchrun, "
                "accelerate launch or SLURM tasks, one process is enough): accelerate shards "
                "only multi-GPU runs and would silently train unsharded",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def phases(self) -> list[str]:
        """Training phases in order: [] for none, ['cpt', 'lora'] for cpt_lora, else [name]."""
        if self.name == "none":
            return []
        return ["cpt", "lora"] if self.name == "cpt_lora" else [self.name]

"""LoRA recovery with peft: adapters on the linear projections, merged back afterwards.

Target names come from `recover.lora_targets` (Llama's names by default); the model family's
adapter maps them onto its own modules, e.g. Phi-3's fused qkv / gate-up projections.

peft wraps every targeted `nn.Linear` on its own, so width-pruned models whose layers have
different shapes work unchanged. After training, `merge_and_unload` folds the adapters into the
weights and returns the plain model, with the same shapes and no peft modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

from harness.models.adapters import adapter_for
from harness.models.adapters.base import LLAMA_PROJECTIONS
from harness.recovery.config import RecoverConfig
from harness.recovery.registry import Phase, PhaseContext, RecoveryMethod, register
from harness.recovery.trainer import train_phase


@dataclass
class LoraConfig(RecoverConfig):
    """LLM-Pruner / Shortened LLaMA: r=8, alpha=16, lr 1e-4, all seven projections."""

    DETERMINING = ("lora_lr", "lora_r", "lora_alpha", "lora_dropout", "lora_targets")

    name: str = "lora"
    lora_lr: float = 1e-4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    # in Llama's vocabulary; each family's adapter maps them onto its modules (Phi-3: fused qkv)
    lora_targets: list[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))

    def checks(self):
        return [
            *super().checks(),
            (self.lora_lr > 0, f"recover.lora_lr must be > 0, got {self.lora_lr}"),
            (self.lora_r >= 1, f"recover.lora_r must be >= 1, got {self.lora_r}"),
            (self.lora_alpha > 0, f"recover.lora_alpha must be > 0, got {self.lora_alpha}"),
            (0 <= self.lora_dropout < 1,
             f"recover.lora_dropout must be in [0, 1), got {self.lora_dropout}"),
            (len(self.lora_targets) > 0, "recover.lora_targets must name at least one module"),
            (set(self.lora_targets) <= set(LLAMA_PROJECTIONS),
             f"recover.lora_targets: {sorted(set(self.lora_targets) - set(LLAMA_PROJECTIONS))} "
             f"are not projections; choose from {', '.join(LLAMA_PROJECTIONS)} (Llama's names; "
             "each family maps them onto its own modules)"),
        ]


def lora_config(cfg, model) -> PeftLoraConfig:
    """peft settings; `cfg.lora_targets` mapped onto the model family's own module names."""
    return PeftLoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=adapter_for(model).lora_targets(cfg.lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach_lora(model, cfg) -> PeftModel:
    """Wrap `model` (in place) with fresh, seeded LoRA adapters; only adapters are trainable."""
    torch.manual_seed(cfg.seed)
    return get_peft_model(model, lora_config(cfg, model))


def merge_lora(peft_model: PeftModel) -> torch.nn.Module:
    """Fold the adapters into the base weights and return the plain model."""
    return peft_model.merge_and_unload()


def run_lora(model, ctx: PhaseContext):
    """Train LoRA adapters for `ctx.steps` at `lora_lr`; return (merged model, metrics)."""
    peft_model = attach_lora(model, ctx.cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    try:
        peft_model, metrics = train_phase(
            peft_model, ctx.dataset, ctx.out_dir, ctx.cfg, lr=ctx.cfg.lora_lr,
            max_steps=ctx.steps, report_to=ctx.report_to, callbacks=ctx.callbacks,
            eval_dataset=ctx.eval_dataset)
    except BaseException:
        peft_model.unload()  # leave the caller's model without adapters
        raise
    metrics["trainable_params"] = trainable
    return merge_lora(peft_model).requires_grad_(True).eval(), metrics


PHASE = Phase("lora", run_lora, full_parameters=False)
register(RecoveryMethod("lora", LoraConfig, (PHASE,), needs=frozenset({"training_data"})))

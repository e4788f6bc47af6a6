"""Continued pretraining (CPT): full-parameter training on packed sequences.

Shortened LLaMA recipe: AdamW (beta 0.9/0.95, weight decay 0.1), linear warmup then cosine decay,
lr 1e-4 by default, every parameter trainable. The arguments come from `trainer.training_args`.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.recovery.config import RecoverConfig
from harness.recovery.registry import Phase, PhaseContext, RecoveryMethod, register
from harness.recovery.trainer import train_phase


@dataclass
class CptConfig(RecoverConfig):
    DETERMINING = ("lr",)

    name: str = "cpt"
    lr: float = 1e-4  # full-parameter learning rate

    def checks(self):
        return [*super().checks(), (self.lr > 0, f"recover.lr must be > 0, got {self.lr}")]


def run_cpt(model, ctx: PhaseContext, **trainer_kwargs):
    """Train every parameter of `model` in place; return (model in eval mode, phase metrics)."""
    model.requires_grad_(True)
    model, metrics = train_phase(model, ctx.dataset, ctx.out_dir, ctx.cfg, lr=ctx.cfg.lr,
                                 max_steps=ctx.steps, report_to=ctx.report_to,
                                 callbacks=ctx.callbacks, eval_dataset=ctx.eval_dataset,
                                 **trainer_kwargs)
    metrics["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model.eval(), metrics


PHASE = Phase("cpt", run_cpt)
register(RecoveryMethod("cpt", CptConfig, (PHASE,), needs=frozenset({"training_data"})))

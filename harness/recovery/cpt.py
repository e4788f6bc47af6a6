"""Continued pretraining (CPT): full-parameter training on packed sequences.

Shortened LLaMA recipe: AdamW (beta 0.9/0.95, weight decay 0.1), linear warmup then cosine decay,
lr 1e-4 by default, every parameter trainable. The arguments come from `trainer.training_args`.
"""

from __future__ import annotations

from pathlib import Path

from harness.recovery.trainer import train_phase


def run_cpt(
    model, cfg, dataset, out_dir: str | Path, max_steps: int, **phase_kwargs
) -> tuple[object, dict]:
    """Train every parameter of `model` in place; return (model in eval mode, phase metrics)."""
    model.requires_grad_(True)
    model, metrics = train_phase(
        model, dataset, out_dir, cfg, lr=cfg.lr, max_steps=max_steps, **phase_kwargs
    )
    metrics["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model.eval(), metrics

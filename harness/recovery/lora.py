"""LoRA recovery with peft: adapters on the linear projections, merged back afterwards.

Target names come from `recover.lora_targets` (Llama's names by default); the model family's
adapter maps them onto its own modules, e.g. Phi-3's fused qkv / gate-up projections.

peft wraps every targeted `nn.Linear` on its own, so width-pruned models whose layers have
different shapes work unchanged. After training, `merge_and_unload` folds the adapters into the
weights and returns the plain model, with the same shapes and no peft modules.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from harness.models.adapters import adapter_for
from harness.recovery.trainer import train_phase


def lora_config(cfg, model) -> LoraConfig:
    """peft settings; `cfg.lora_targets` mapped onto the model family's own module names."""
    return LoraConfig(
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


def run_lora(
    model, cfg, dataset, out_dir: str | Path, max_steps: int, **phase_kwargs
) -> tuple[torch.nn.Module, dict]:
    """Train LoRA adapters for `max_steps` at `cfg.lora_lr`; return (merged model, metrics)."""
    peft_model = attach_lora(model, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    try:
        peft_model, metrics = train_phase(
            peft_model, dataset, out_dir, cfg, lr=cfg.lora_lr, max_steps=max_steps, **phase_kwargs
        )
    except BaseException:
        peft_model.unload()  # leave the caller's model without adapters
        raise
    metrics["trainable_params"] = trainable
    return merge_lora(peft_model).requires_grad_(True).eval(), metrics

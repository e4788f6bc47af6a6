"""FSDP for recovery: typed `recover.fsdp*` keys mapped onto the Trainer's own FSDP options.

Sharding itself is the Trainer's (accelerate's FSDP2, `fully_shard` per decoder layer); nothing
here shards by hand. What is ours: the translation of the config, and getting a plain model back
after training. FSDP2 turns the trained module into a sharded one in place, so before training we
keep a skeleton copy whose parameters live on the meta device (no memory), and afterwards rank 0
gathers the full weights (on the CPU) and broadcasts them into every rank's skeleton: the next
phase (LoRA after CPT) and the saved entry start from an ordinary model again.

  recover.fsdp=full_shard        parameters, gradients and optimizer state sharded (ZeRO-3)
  recover.fsdp=shard_grad_op     parameters kept gathered between forward and backward (ZeRO-2)
  recover.fsdp_offload=true      sharded parameters, gradients and optimizer state on the CPU
  recover.gradient_checkpointing FSDP's own activation checkpointing when FSDP is on
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def fsdp_arguments(cfg) -> dict:
    """TrainingArguments keywords for `cfg.fsdp*` ({} when FSDP is off)."""
    if cfg.fsdp == "none":
        return {}
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "reshard_after_forward": cfg.fsdp == "full_shard",
            "cpu_offload": bool(cfg.fsdp_offload),
            "activation_checkpointing": bool(cfg.gradient_checkpointing),
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one unit per decoder layer
            "state_dict_type": "SHARDED_STATE_DICT",  # checkpoints: one file per rank
        },
    }


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` (tied weights tied, buffers real) whose parameters are on the meta
    device, so it costs no memory."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def _materialize(model: nn.Module) -> None:
    """Give every meta parameter empty CPU storage (a tied parameter once)."""
    made: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.is_meta:
                if id(p) not in made:
                    made[id(p)] = nn.Parameter(torch.empty_like(p, device="cpu"), p.requires_grad)
                module._parameters[name] = made[id(p)]


def gather_plain(sharded: nn.Module, skeleton: nn.Module) -> nn.Module:
    """Every rank: the full trained weights of `sharded` loaded into `skeleton` (on the CPU)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        set_model_state_dict,
    )

    full = get_model_state_dict(
        sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    _materialize(skeleton)
    set_model_state_dict(skeleton, full, options=StateDictOptions(
        full_state_dict=True, broadcast_from_rank0=True))
    return skeleton


def start_config(model_cfg, recover_cfg):
    """The model config every rank loads the start model with: unchanged without FSDP; under
    FSDP into CPU memory in the precision it trains in (FSDP moves each rank's shard over)."""
    if recover_cfg.fsdp == "none":
        return model_cfg
    from dataclasses import replace

    from harness.models.loader import resolve_device, resolve_dtype

    dtype = resolve_dtype(model_cfg.dtype, resolve_device(model_cfg.device))
    return replace(model_cfg, device="cpu", dtype=str(dtype).removeprefix("torch."))

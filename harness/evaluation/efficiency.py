"""Static efficiency figures: parameters, weight bytes, analytic FLOPs per token, KV-cache bytes.

Everything is read from the modules themselves, so width-pruned models with uneven layers (fewer
heads or MLP channels in some layers), depth-pruned models and LoRA-wrapped models are counted
as they really are.

FLOPs count matrix multiplications only (one multiply-add = 2 FLOPs); norms, activations,
softmax, residual adds, biases and RoPE are left out:

- every `nn.Linear` (q/k/v/o, gate/up/down, fused or not, LoRA A/B, the LM head):
  `2 * in * out` per token
- attention, per layer and token at context length `ctx`: `QK^T` and `PV` are
  `2 * 2 * n_q_heads * head_dim * ctx` (the adapter gives each layer's query width)

`flops_per_token(model, seq_len)` is the average per token of a forward over `seq_len` tokens with
dense (unmasked-cost) attention kernels, so `batch * seq_len * flops_per_token(model, seq_len)`
is exactly what `torch.utils.flop_counter.FlopCounterMode` counts for an eager forward (tested on
dense, uneven and depth-pruned models). For one decode step at context `ctx` use `seq_len=ctx`.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.evaluation.registry import Evaluation, register
from harness.models.adapters import adapter_for
from harness.models.params import count_params


def _unique_tensors(tensors) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in tensors:
        key = (t.data_ptr(), t.numel(), t.dtype) if t.device.type != "meta" else id(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters, each distinct tensor once (tied embeddings count once)."""
    return sum(p.numel() * p.element_size() for p in _unique_tensors(model.parameters()))


def decode_weight_bytes(model: nn.Module) -> int:
    """Weight bytes one decode step must read: all weights but an untied input embedding
    (of which only the batch's rows are read)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == emb.data_ptr()
    return weight_bytes(model) - (0 if tied else emb.numel() * emb.element_size())


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention module of every decoder layer that still has one."""
    adapter = adapter_for(model)
    return [adapter.attention(layer) for layer in adapter.layers(model)
            if adapter.has(layer, "attn")]


def _attention_dims(model: nn.Module) -> list[tuple[int, int]]:
    """(query width n_q * head_dim, K+V width 2 * n_kv * head_dim) of every attention."""
    adapter = adapter_for(model)
    out = []
    for layer in adapter.layers(model):
        if adapter.has(layer, "attn"):
            p = adapter.pieces(layer)
            out.append((p["q"].size, p["k"].size + p["v"].size))
    return out


def kv_cache_bytes(
    model: nn.Module, context: float, batch: int = 1, dtype_bytes: int | None = None
) -> float:
    """Bytes of the K and V cache at `context` tokens: 2 * sum_layers(kv_dim) * ctx * batch * b."""
    if dtype_bytes is None:
        dtype_bytes = next(model.parameters()).element_size()
    kv_dim = sum(kv for _, kv in _attention_dims(model))
    return kv_dim * context * batch * dtype_bytes


def flops_breakdown(model: nn.Module, seq_len: int) -> dict[str, int]:
    """Matmul FLOPs per token by part: attn_proj, mlp (all other Linears), attention, lm_head."""
    if seq_len <= 0:
        raise ValueError(f"seq_len={seq_len}; must be positive")
    head = model.get_output_embeddings()
    attn = attention_modules(model)
    attn_linears = {id(m) for a in attn for m in a.modules() if isinstance(m, nn.Linear)}
    parts = {"attn_proj": 0, "mlp": 0, "attention": 0, "lm_head": 0}
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        flops = 2 * module.in_features * module.out_features
        if module is head:
            parts["lm_head"] += flops
        elif id(module) in attn_linears:
            parts["attn_proj"] += flops
        else:
            parts["mlp"] += flops
    for q_dim, _ in _attention_dims(model):
        parts["attention"] += 2 * 2 * q_dim * seq_len
    return parts


def flops_per_token(model: nn.Module, seq_len: int) -> int:
    """Forward matmul FLOPs per token at context `seq_len` (see the module docstring)."""
    return sum(flops_breakdown(model, seq_len).values())


def efficiency_metrics(model: nn.Module, seq_len: int = 128) -> dict[str, float]:
    """Flat `efficiency/...` metrics: params, bytes, FLOPs/token at `seq_len`, KV bytes/token."""
    params = count_params(model)
    parts = flops_breakdown(model, seq_len)
    return {
        "efficiency/params_total": params["total"],
        "efficiency/params_nonembedding": params["nonembedding"],
        "efficiency/weight_bytes": weight_bytes(model),
        "efficiency/flops_per_token": sum(parts.values()),
        "efficiency/flops_seq_len": seq_len,
        **{f"efficiency/flops_per_token/{k}": v for k, v in parts.items()},
        "efficiency/kv_bytes_per_token": kv_cache_bytes(model, 1),
        "efficiency/num_layers": len(attention_modules(model)),
    }


def _metrics(label: str, fields: dict, result: dict) -> dict:
    return {**result, "params/total": result["efficiency/params_total"],
            "params/nonembedding": result["efficiency/params_nonembedding"]}


register(Evaluation(
    "efficiency", keys=lambda spec: {"efficiency": {"seq_len": spec.eval.seq_len}},
    run=lambda ctx, label, fields: efficiency_metrics(ctx.model(), fields["seq_len"]),
    metrics=_metrics, real_weights=False))

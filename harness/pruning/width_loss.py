"""Measured-loss width criterion (`prune.criterion=loss`): each attention unit is scored by how
much the calibration loss rises when it alone is removed from the dense model.

First-order Taylor scores are a poor guide for units as coarse as a KV group (a third of a
SmolLM2 layer's attention): on SmolLM2 they pick the truly cheapest group in 8 of 24 layers,
chance level (results/fidelity.md). Measuring the loss is exact for one removal at a time.

Cost is kept down the way the depth `ppl` criterion does it (depth_scores.ppl_scores): one dense
pass records the hidden states entering every block; for a unit of layer i only blocks i..L-1
run again, with the unit's query heads zeroed at o_proj's input (exactly what removing them, and
for a KV group its k/v rows too, does to the output). That is sum over pruned layers of
units x (L - i) block forwards. MLP channels are scored by another criterion
(`prune.mlp_criterion`, default taylor). Scores are loss increases (lower = cheaper to remove),
comparable across layers, so `scope=global` ranks them directly.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from harness.models.adapters import adapter_for
from harness.pruning.depth_scores import dense_trace, lm_loss, run_from


def unit_heads(n_q: int, n_kv: int, unit: str) -> list[list[int]]:
    """Query heads each attention unit of a layer consists of (kv_group: G consecutive heads)."""
    if unit == "kv_group":
        g = n_q // n_kv
        return [list(range(k * g, (k + 1) * g)) for k in range(n_kv)]
    return [[h] for h in range(n_q)]


@contextmanager
def heads_zeroed(o_proj, head_dim: int, heads: list[int]):
    """Within the block, the given query heads contribute nothing to the attention output."""

    def pre(_mod, args):
        x = args[0].clone()
        for h in heads:
            x[..., h * head_dim:(h + 1) * head_dim] = 0
        return (x, *args[1:])

    handle = o_proj.register_forward_pre_hook(pre)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def measured_loss_scores(ctx) -> None:
    """Fill `ctx.out.attn[i]` with the loss increase of removing each unit of layer i alone."""
    if "attn" not in ctx.kinds:
        return
    model, ids, adapter = ctx.model, ctx.calib, adapter_for(ctx.model)
    layers = adapter.layers(model)
    trace = dense_trace(model, ids, mids=False)
    base = lm_loss(model, trace.hidden[-1], ids).item()
    ctx.out.calibration["loss"] = base
    for i in ctx.layers:
        shape, o_proj = adapter.shape(layers[i]), adapter.out_proj(layers[i], "attn")
        scores = []
        for heads in unit_heads(shape.n_q, shape.n_kv, ctx.unit):
            with heads_zeroed(o_proj, shape.head_dim, heads):
                hidden = layers[i](trace.hidden[i], **trace.kwargs[i])
            hidden = run_from(model, trace, i + 1, hidden)
            scores.append(lm_loss(model, hidden, ids).item() - base)
        ctx.out.attn[i] = torch.tensor(scores, dtype=torch.float64)

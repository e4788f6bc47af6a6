"""Measured-loss width criterion (`prune.criterion=loss`): each attention unit is scored by how
much the calibration loss rises when it alone is removed from the dense model.

First-order Taylor scores are a poor guide for units as coarse as a KV group (a third of a
SmolLM2 layer's attention): on SmolLM2 they pick the truly cheapest group in 8 of 24 layers,
chance level (results/fidelity.md). Measuring the loss is exact for one removal at a time.

Cost is kept down the way the depth `ppl` criterion does it (depth_scores.ppl_scores): one
block-by-block pass (harness.pruning.importance.sequential); at a pruned layer i, each unit starts its own
residual stream from the dense input of block i, with the unit's query heads zeroed at the
input of the attention's output projection (exactly what removing them, and for a KV group its
key/value rows too, does to the output), and every stream goes through the later blocks as they
come. That is sum over pruned layers of units x (L - i) block forwards, each block loaded once.
MLP channels are scored by another criterion (`prune.mlp_criterion`, default taylor). Scores are loss increases (lower = cheaper to remove),
comparable across layers, so `scope=global` ranks them directly.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from harness.models.adapters import adapter_for
from harness.pruning.importance.depth import lm_loss
from harness.pruning.importance.sequential import compute_device, head_on, walk


def unit_heads(n_q: int, n_kv: int, unit: str) -> list[list[int]]:
    """Query heads each attention unit of a layer consists of (kv_group: G consecutive heads)."""
    if unit == "kv_group":
        g = n_q // n_kv
        return [list(range(k * g, (k + 1) * g)) for k in range(n_kv)]
    return [[h] for h in range(n_q)]


@contextmanager
def heads_zeroed(out_proj, head_dim: int, heads: list[int]):
    """Within the block, the given query heads contribute nothing to the attention output."""

    def pre(_mod, args):
        x = args[0].clone()
        for h in heads:
            x[..., h * head_dim:(h + 1) * head_dim] = 0
        return (x, *args[1:])

    handle = out_proj.register_forward_pre_hook(pre)
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
    device, pruned, streams = compute_device(model), set(ctx.layers), {}

    def advance(j, layer, kwargs, hidden_in):
        for key in streams:
            streams[key] = layer(streams[key], **kwargs)
        if j in pruned:
            shape, out_proj = adapter.shape(layer), adapter.out_proj(layer, "attn")
            for u, heads in enumerate(unit_heads(shape.n_q, shape.n_kv, ctx.unit)):
                with heads_zeroed(out_proj, shape.head_dim, heads):
                    streams[(j, u)] = layer(hidden_in, **kwargs)

    dense = None
    for step in walk(model, ids, device, visit=advance):
        dense = step[2]  # the last block's output of the dense model
    with head_on(model, device):
        base = lm_loss(model, dense, ids).item()
        losses = {key: lm_loss(model, h, ids).item() - base for key, h in streams.items()}
    ctx.out.calibration["loss"] = base
    for i in ctx.layers:
        n = len([k for k in losses if k[0] == i])
        ctx.out.attn[i] = torch.tensor([losses[(i, u)] for u in range(n)], dtype=torch.float64)

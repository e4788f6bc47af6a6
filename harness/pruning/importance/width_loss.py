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

Batched (issue 26): the streams are stacked along the batch axis, so each block runs once per
chunk of `STREAM_BATCH` calibration rows instead of once per stream (the ablated forwards of a
layer's units are one forward, each stream's heads zeroed in its own rows), and each stream's
loss is taken over chunks of samples instead of one sample at a time. The arithmetic of every
row is the reference's; only the matrix sizes change, so scores agree to float rounding and the
kept units are the same (`measured_loss_scores_reference`, the unbatched original, is kept for
the equality test and the benchmark). The block forwards are the same in number: batching buys
only the efficiency of larger matrices, not fewer FLOPs, and on a 2-core CPU that is nothing
measurable (SmolLM2, KV groups, layers 4..27: 15.7x Taylor's time unbatched, 16.5x batched, the
FLOP ratio being about 15.5x; README). It is meant for accelerators (not yet measured there).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

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
def measured_loss_scores_reference(ctx) -> None:
    """The unbatched original: one forward per stream and block, the loss one sample at a time.
    Fills `ctx.out.attn[i]` with the loss increase of removing each unit of layer i alone."""
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


STREAM_BATCH = 64  # calibration rows per stacked block forward (streams x samples)
HEAD_BATCH = 5  # samples per LM-head matmul when a stream's loss is taken


def _expand(obj, rows: int, copies: int):
    """Block keyword arguments for `copies` stacked copies of a `rows`-row batch: tensors with a
    batch axis of `rows` (masks) repeated along it; broadcast ones (rotary, positions) kept."""
    if isinstance(obj, torch.Tensor):
        if copies > 1 and rows > 1 and obj.dim() >= 2 and obj.shape[0] == rows:
            return obj.repeat(copies, *([1] * (obj.dim() - 1)))
        return obj
    if isinstance(obj, dict):
        return {k: _expand(v, rows, copies) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return type(obj)(_expand(v, rows, copies) for v in obj)
    return obj


def _chunks(n: int, rows: int) -> list[range]:
    per = max(1, STREAM_BATCH // rows)
    return [range(a, min(a + per, n)) for a in range(0, n, per)]


@contextmanager
def heads_zeroed_per_stream(out_proj, head_dim: int, heads: list[list[int]], rows: int):
    """Stacked streams: stream s (rows s*rows..) has its query heads `heads[s]` zeroed at the
    input of the attention's output projection, as `heads_zeroed` does for one stream."""

    def pre(_mod, args):
        x = args[0].clone()
        for s, hs in enumerate(heads):
            for h in hs:
                x[s * rows:(s + 1) * rows, ..., h * head_dim:(h + 1) * head_dim] = 0
        return (x, *args[1:])

    handle = out_proj.register_forward_pre_hook(pre)
    try:
        yield
    finally:
        handle.remove()


def _run_chunks(layer, chunks: list[torch.Tensor], kwargs: dict, rows: int) -> None:
    """`layer` applied in place to every chunk of stacked streams (`rows` rows per stream)."""
    for c, x in enumerate(chunks):
        chunks[c] = layer(x, **_expand(kwargs, rows, x.shape[0] // rows))


def _append(chunks: list[torch.Tensor], y: torch.Tensor, rows: int) -> None:
    """Add a chunk of new streams; joined once to the last chunk while both fit one batch."""
    if chunks and chunks[-1].shape[0] + y.shape[0] <= max(rows, STREAM_BATCH):
        chunks[-1] = torch.cat([chunks[-1], y])
    else:
        chunks.append(y)


def _loss(model, hidden: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean next-token cross-entropy (as `lm_loss`), `HEAD_BATCH` samples per LM-head matmul."""
    adapter, ids = adapter_for(model), ids.to(hidden.device)
    total = 0.0
    for a in range(0, ids.shape[0], HEAD_BATCH):
        logits = adapter.logits(model, hidden[a:a + HEAD_BATCH, :-1]).float()
        total += F.cross_entropy(logits.flatten(0, 1), ids[a:a + HEAD_BATCH, 1:].flatten(),
                                 reduction="sum").item()
    return total / (ids.shape[0] * (ids.shape[1] - 1))


@torch.no_grad()
def measured_loss_scores(ctx) -> None:
    """Fill `ctx.out.attn[i]` with the loss increase of removing each unit of layer i alone
    (the reference's scores, streams stacked: see the module docstring)."""
    if "attn" not in ctx.kinds:
        return
    model, ids, adapter = ctx.model, ctx.calib, adapter_for(ctx.model)
    device, pruned, rows = compute_device(model), set(ctx.layers), ctx.calib.shape[0]
    keys: list[tuple[int, int]] = []  # stream order: chunk by chunk, row block by row block
    chunks: list[torch.Tensor] = []  # streams stacked along the batch axis, never re-stacked

    def advance(j, layer, kwargs, hidden_in):
        _run_chunks(layer, chunks, kwargs, rows)
        if j in pruned:
            shape, out_proj = adapter.shape(layer), adapter.out_proj(layer, "attn")
            units = unit_heads(shape.n_q, shape.n_kv, ctx.unit)
            for part in _chunks(len(units), rows):
                heads = [units[u] for u in part]
                with heads_zeroed_per_stream(out_proj, shape.head_dim, heads, rows):
                    y = layer(hidden_in.repeat(len(part), 1, 1),
                              **_expand(kwargs, rows, len(part)))
                _append(chunks, y, rows)
                keys.extend((j, u) for u in part)

    dense = None
    for step in walk(model, ids, device, visit=advance):
        dense = step[2]
    with head_on(model, device):
        base = _loss(model, dense, ids)
        states = [h for x in chunks for h in x.split(rows)]
        losses = {key: _loss(model, h, ids) - base for key, h in zip(keys, states, strict=True)}
    ctx.out.calibration["loss"] = base
    for i in ctx.layers:
        n = len([k for k in losses if k[0] == i])
        ctx.out.attn[i] = torch.tensor([losses[(i, u)] for u in range(n)], dtype=torch.float64)

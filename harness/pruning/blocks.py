"""Skipping and removing the decoder blocks of a causal LM (any family with an adapter).

`skip_blocks` / `skip_sublayer` take a block or sublayer out for the duration of a `with`;
`remove_blocks` / `remove_sublayers` take them out for good. `count_block_forwards` counts
decoder-layer calls, so the cost of a criterion can be measured.

A removed sublayer is stood in for by a parameter-free module that adds zero to the residual
(`SkippedAttention`, `SkippedMLP`), with the norms that belong to it (its pre-norm, and on
sandwich-norm families its post-norm, which maps zero to zero) replaced by `nn.Identity`; the
adapter says which norms those are. The removed indices live in `config.harness_skip_attn` /
`config.harness_skip_mlp`. A stock HF class cannot rebuild that, so such checkpoints load
through `harness.models.uneven.load_uneven` (the skeleton, then a strict state-dict load). Block removal needs nothing of this: the result is a stock model with fewer
layers (and per-layer config lists such as `layer_types` cut to match).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from harness.models.adapters import adapter_for
from harness.models.uneven import SKIP_KEYS, apply_sublayer_skips, renumber_cache_indices

UNITS = ("block", "attn", "mlp")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return adapter_for(model).layers(model)


def _cut_layers(model: nn.Module, keep: list[int]) -> None:
    """Keep only the blocks `keep`, in the layer list and in per-layer config lists."""
    adapter, cfg = adapter_for(model), model.config
    backbone = adapter.backbone(model)
    backbone.layers = nn.ModuleList([backbone.layers[i] for i in keep])
    cfg.num_hidden_layers = len(keep)
    for key in adapter.per_layer_config:
        if getattr(cfg, key, None) is not None:
            setattr(cfg, key, [getattr(cfg, key)[i] for i in keep])


@contextmanager
def skip_blocks(model: nn.Module, indices):
    """Temporarily drop blocks from the layer list (and from per-layer config lists)."""
    drop, cfg = set(indices), model.config
    backbone = adapter_for(model).backbone(model)
    saved = (backbone.layers, cfg.num_hidden_layers,
             {k: getattr(cfg, k) for k in adapter_for(model).per_layer_config if hasattr(cfg, k)})
    _cut_layers(model, [i for i in range(len(backbone.layers)) if i not in drop])
    try:
        yield
    finally:
        backbone.layers, cfg.num_hidden_layers = saved[0], saved[1]
        for key, value in saved[2].items():
            setattr(cfg, key, value)


@contextmanager
def skip_sublayer(model: nn.Module, index: int, unit: str):
    """Temporarily replace block `index`'s attention or MLP (and its norms) by a zero stand-in."""
    adapter = adapter_for(model)
    layer = adapter.layers(model)[index]
    saved = {name: getattr(layer, name) for name in adapter.sublayer_names(unit)}
    adapter.remove_sublayer(layer, unit)
    try:
        yield
    finally:
        for name, module in saved.items():
            setattr(layer, name, module)


def remove_blocks(model, indices) -> nn.Module:
    """Delete whole blocks in place; the result is a stock HF model with fewer layers."""
    layers, cfg = decoder_layers(model), model.config
    drop = set(indices)
    if any(not 0 <= i < len(layers) for i in drop):
        raise ValueError(f"block indices {sorted(drop)} out of range for {len(layers)} layers")
    keep = [i for i in range(len(layers)) if i not in drop]
    _cut_layers(model, keep)
    for key in SKIP_KEYS.values():
        if getattr(cfg, key, None):
            setattr(cfg, key, [keep.index(i) for i in getattr(cfg, key) if i in keep])
    renumber_cache_indices(model)
    return model


def remove_sublayers(model, indices, unit: str) -> nn.Module:
    """Remove the attention or MLP (with its pre-norm) of blocks, recording it in the config."""
    if unit not in SKIP_KEYS:
        raise ValueError(f"unit must be one of {list(SKIP_KEYS)}, got {unit!r}")
    key = SKIP_KEYS[unit]
    setattr(model.config, key, sorted(set(getattr(model.config, key, None) or []) | set(indices)))
    return apply_sublayer_skips(model)


@dataclass
class ForwardCounter:
    """Number of decoder-block forwards seen while the `count_block_forwards` context is open."""

    count: int = 0


@contextmanager
def count_block_forwards(model: nn.Module):
    """Count every decoder-layer call (including partial ones with a sublayer skipped)."""
    counter = ForwardCounter()
    layers = list(decoder_layers(model))

    def hook(_module, _args):
        counter.count += 1

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        yield counter
    finally:
        for h in handles:
            h.remove()


def final_hidden(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The last block's output (before the final norm) from a full forward without cache."""
    out = []
    handle = decoder_layers(model)[-1].register_forward_hook(lambda _m, _a, o: out.append(o))
    try:
        adapter_for(model).backbone(model)(input_ids=ids.to(model.device), use_cache=False)
    finally:
        handle.remove()
    return out[0]

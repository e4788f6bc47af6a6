"""Sequential calibration: the calibration batch goes through the decoder one block at a time.

As in Wanda and SparseGPT, scoring never runs the whole model at once: the calibration hidden
states are carried from block to block, and only the block being run has to be on the compute
device. A model larger than one GPU stays in CPU memory (`model.device=cpu`) and each block
visits the GPU in turn; on a model that already sits on the device nothing moves. Activation
criteria (flap, wanda_sp, block_influence, angular) and the ppl criterion are written this way,
so their peak memory is the weights plus one block's activations plus the hidden states they
keep, whatever the depth.

`block_inputs` gets what the model would pass each block (rotary embeddings, causal masks,
positions, per layer: hybrid-attention families give layers different masks) from one forward
in which every block is the identity, so no block computes anything twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from harness.models.adapters import adapter_for


def _to(obj, device: torch.device, memo: dict):
    """Tensors inside `obj` (dicts, tuples, lists) moved to `device`, each tensor once (blocks
    share their rotary embeddings and masks)."""
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = obj.to(device)
        return memo[id(obj)]
    if isinstance(obj, dict):
        return {k: _to(v, device, memo) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return type(obj)(_to(v, device, memo) for v in obj)
    return obj


@contextmanager
def on_device(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """`module` on `device` inside the block, back where it was afterwards (no-op if there)."""
    home = next(module.parameters(), torch.empty(0)).device
    moved = home != torch.device(device)
    if moved:
        module.to(device)
    try:
        yield module
    finally:
        if moved:
            module.to(home)


class _PassThrough(nn.Module):
    """Stands in for a block: records the keyword arguments it gets and returns its input;
    other attributes (a hybrid family's `attention_type`) come from the block it replaces."""

    def __init__(self, block: nn.Module, sink: list):
        super().__init__()
        self.__dict__["_block"], self.__dict__["_sink"] = block, sink  # not submodules

    def forward(self, hidden_states, *args, **kwargs):
        self._sink.append(kwargs)
        return hidden_states

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_block"], name)


@torch.no_grad()
def block_inputs(model: nn.Module, ids: torch.Tensor,
                 device: torch.device) -> tuple[torch.Tensor, list[dict]]:
    """(embedded calibration batch, [keyword arguments the model passes block i]) on `device`,
    from one forward of the backbone with every block replaced by a pass-through."""
    adapter = adapter_for(model)
    layers, captured, memo = adapter.layers(model), [], {}
    blocks = list(layers)
    for i, block in enumerate(blocks):
        layers[i] = _PassThrough(block, captured)
    first = []
    hook = layers[0].register_forward_pre_hook(lambda _m, args: first.append(args[0]))
    embed = model.get_input_embeddings()
    try:
        adapter.backbone(model)(input_ids=ids.to(embed.weight.device), use_cache=False)
    finally:
        hook.remove()
        for i, block in enumerate(blocks):
            layers[i] = block
    return first[0].to(device), [_to(kw, device, memo) for kw in captured]


def walk(model: nn.Module, ids: torch.Tensor, device: torch.device, on_block=None,
         visit=None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (i, input, output) of every block i in order; each block visits `device` once.
    While block i is there: `on_block(i, layer)` may return hook handles to hold during its
    forward, and `visit(i, layer, kwargs, input)` runs after it (more forwards of the block)."""
    hidden, kwargs = block_inputs(model, ids, device)
    for i, layer in enumerate(adapter_for(model).layers(model)):
        with torch.no_grad(), on_device(layer, device):
            handles = on_block(i, layer) if on_block else []
            try:
                out = layer(hidden, **kwargs[i])
            finally:
                for h in handles:
                    h.remove()
            if visit:
                visit(i, layer, kwargs[i], hidden)
        yield i, hidden, out
        hidden = out


def compute_device(model: nn.Module, device=None) -> torch.device:
    """Where scoring runs: `device` if given, else this process's accelerator (the CPU without
    one), wherever the model's weights are."""
    if device is not None:
        return torch.device(device)
    from harness.models.loader import resolve_device

    return resolve_device("auto")


def head_on(model: nn.Module, device: torch.device):
    """The final norm and LM head on `device` for the block (a context manager)."""
    adapter = adapter_for(model)
    stack = [adapter.backbone(model).norm, model.get_output_embeddings()]

    @contextmanager
    def both():
        with on_device(stack[0], device), on_device(stack[1], device):
            yield

    return both()

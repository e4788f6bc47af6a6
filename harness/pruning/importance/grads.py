"""Streamed gradients for importance scoring: never hold all of a model's gradients, nor all of
its activations, at once."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from harness.models.adapters import adapter_for


@contextmanager
def recomputed_blocks(model: nn.Module) -> Iterator[None]:
    """Within the block, every decoder block keeps only its input for the backward pass and
    recomputes its activations there (torch.utils.checkpoint, non-reentrant): one block's
    activations at a time instead of all of them, for one more forward. The recomputation
    repeats the same operations, so gradients are unchanged."""
    layers = list(adapter_for(model).layers(model))
    for layer in layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@contextmanager
def streamed_grads(model: nn.Module, params: Iterable[nn.Parameter],
                   hook: Callable[[nn.Parameter], None]) -> Iterator[None]:
    """Within the block, only `params` require grad; as each one's gradient is accumulated,
    `hook(p)` folds it into a score and the gradient is freed at once, and decoder blocks
    recompute their activations in the backward pass (`recomputed_blocks`), so peak memory
    stays near the weights plus one block's activations and gradients. Gradient flags are
    restored on exit."""
    params = list(params)
    flags = {p: p.requires_grad for p in model.parameters()}

    def consume(p: nn.Parameter) -> None:
        hook(p)
        p.grad = None

    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)
    handles = []
    try:
        for p in params:
            p.requires_grad_(True)
            handles.append(p.register_post_accumulate_grad_hook(consume))
        with torch.enable_grad(), recomputed_blocks(model):
            yield
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None

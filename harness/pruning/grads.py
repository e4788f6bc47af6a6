"""Streamed gradients for importance scoring: never hold all of a model's gradients at once."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def streamed_grads(model: nn.Module, params: Iterable[nn.Parameter],
                   hook: Callable[[nn.Parameter], None]) -> Iterator[None]:
    """Within the block, only `params` require grad; as each one's gradient is accumulated,
    `hook(p)` folds it into a score and the gradient is freed at once, so peak memory stays
    near the weights plus one layer's gradients. Gradient flags are restored on exit."""
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
        with torch.enable_grad():
            yield
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None

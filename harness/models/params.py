"""Parameter counts that every pruning method reports the same way.

`total` counts each distinct tensor once (tied input/output embeddings count once);
`nonembedding` leaves out the token embedding and an untied LM head.
"""

from __future__ import annotations

import torch


def _unique(params) -> list[torch.nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def count_params(model: torch.nn.Module) -> dict[str, int]:
    """{'total': ..., 'nonembedding': ...} for a causal LM."""
    total = sum(p.numel() for p in _unique(model.parameters()))
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    embedding = emb.numel()
    if head is not None and head.weight is not emb:
        embedding += head.weight.numel()
    return {"total": total, "nonembedding": total - embedding}

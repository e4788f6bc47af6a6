"""Perplexity exactly as PROTOCOL.md defines it.

The split's token stream is cut into non-overlapping windows of `seq_len` tokens (the last partial
window is dropped); PPL = exp(total next-token NLL / number of predicted tokens) over all windows,
so each window predicts `seq_len - 1` tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def windows(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[n_windows, seq_len] non-overlapping windows of a 1-D id stream, last partial one dropped."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    n = ids.numel() // seq_len
    return ids[: n * seq_len].view(n, seq_len)


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    ids: torch.Tensor,
    seq_len: int = 128,
    batch_size: int = 8,
    desc: str = "ppl",
    progress: bool = True,
) -> dict[str, float]:
    """{'ppl', 'nll', 'tokens', 'predicted'} of `model` on the 1-D token stream `ids`.

    `tokens` counts the tokens in all windows (PROTOCOL.md's "tokens scored"); `predicted` the
    next-token targets the mean NLL runs over (seq_len - 1 per window)."""
    device = next(model.parameters()).device
    chunks = windows(ids, seq_len)
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(chunks), batch_size), desc=desc, disable=not progress):
        batch = chunks[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        targets = batch[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
        total_nll += nll.item()
        total_tokens += targets.numel()
    model.train(was_training)
    if total_tokens == 0:
        raise ValueError(f"text too short for one window of {seq_len} tokens")
    mean = total_nll / total_tokens
    return {"ppl": math.exp(mean), "nll": mean, "tokens": chunks.numel(), "predicted": total_tokens}

"""Depth-pruning criteria: one importance score per candidate block (higher = more important).

Every function takes the model, the calibration ids [n, seq] and the candidate indices, and
returns {index: score} for exactly those candidates. With `unit="attn"`/`"mlp"` a score is for
removing only that sublayer of the block. Loss everywhere is the mean next-token cross-entropy
over all calibration tokens.

- ppl: calibration perplexity with the block removed (Shortened LLaMA). `ppl_scores` caches
  the block boundaries of one dense pass and, for candidate i, runs only blocks i+1..L-1;
  `ppl_scores_naive` runs the whole model once per candidate. Both give the same numbers.
- taylor: sum over the block's weights of |w * dL/dw| (one backward over the whole
  calibration batch; each gradient is folded into its block's score and freed on arrival).
  Like Shortened LLaMA's code: norm weights count, biases (Qwen2's q/k/v) do not.
- magnitude: Frobenius norm of all the block's weight matrices together,
  sqrt(sum_W ||W||_F^2); 1-D tensors (norms, biases) are left out.
- block_influence: ShortGPT's BI, 1 - mean cosine(block input, block output) over all tokens.
- angular: Gromov et al., for n = number of blocks to remove, the angular distance
  arccos(cos(h_l, h_{l+n})) / pi averaged over ALL calibration tokens (the paper uses the last
  token only; all tokens is steadier with 10 short samples). Scores are per window start l;
  the removed set is the window l..l+n-1 with the smallest distance.
- last: score -i, so the last unprotected blocks go first.
- random: uniform scores from `torch.Generator().manual_seed(seed)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from harness.models.adapters import adapter_for
from harness.pruning.blocks import (
    count_block_forwards,  # noqa: F401 - re-exported for callers measuring cost
    decoder_layers,
    final_hidden,
    skip_blocks,
    skip_sublayer,
)
from harness.pruning.grads import streamed_grads

CRITERIA = ("ppl", "taylor", "magnitude", "block_influence", "angular", "last", "random")
BLOCK_ONLY = ("angular",)  # criteria that cannot score a single sublayer


@dataclass
class Trace:
    """One dense pass: `hidden[i]` is block i's input (`hidden[L]` the last block's output),
    `mid[i]` block i's residual stream after attention, `kwargs[i]` what the model passed
    block i (rotary embeddings, causal mask, positions)."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    mid: list[torch.Tensor] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)


@torch.no_grad()
def dense_trace(model: nn.Module, ids: torch.Tensor, mids: bool = True) -> Trace:
    """Run the model once and record every block boundary (without the KV cache);
    `mids=False` leaves out the post-attention states, to save memory."""
    adapter = adapter_for(model)
    trace, layers, handles = Trace(), adapter.layers(model), []

    def block_in(_m, args, kwargs):
        trace.hidden.append(args[0] if args else kwargs["hidden_states"])
        trace.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})

    def mid_in(_m, args):
        trace.mid.append(args[0])

    for layer in layers:
        handles.append(layer.register_forward_pre_hook(block_in, with_kwargs=True))
        if mids:
            handles.append(adapter.mid_module(layer).register_forward_pre_hook(mid_in))
    handles.append(layers[-1].register_forward_hook(lambda _m, _a, out: trace.hidden.append(out)))
    try:
        adapter.backbone(model)(input_ids=ids.to(model.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return trace


@torch.no_grad()
def run_from(model: nn.Module, trace: Trace, start: int, hidden: torch.Tensor) -> torch.Tensor:
    """Feed `hidden` through blocks start..L-1 with the kwargs of the dense pass."""
    layers = decoder_layers(model)
    for j in range(start, len(layers)):
        hidden = layers[j](hidden, **trace.kwargs[j])
    return hidden


def lm_loss(model: nn.Module, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy from the last block's output (final norm, LM head),
    one sample at a time so that only one sample's logits are ever held."""
    ids, adapter = ids.to(hidden.device), adapter_for(model)
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, y in zip(hidden, ids, strict=True):
        logits = adapter.logits(model, h[:-1]).float()
        total = total + F.cross_entropy(logits, y[1:], reduction="sum")
    return total / (ids.shape[0] * (ids.shape[1] - 1))


def perplexity(model: nn.Module, hidden: torch.Tensor, ids: torch.Tensor) -> float:
    return math.exp(lm_loss(model, hidden, ids).item())


def candidates(model, unit: str, protect_first: int, protect_last: int) -> list[int]:
    """Unprotected blocks that still have the `unit` to remove."""
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    hi = len(layers) - protect_last
    return [i for i in range(protect_first, hi) if adapter.has(layers[i], unit)]


@torch.no_grad()
def ppl_scores(model, ids, cands, unit: str = "block") -> dict[int, float]:
    """Perplexity with each candidate removed, resuming from cached block boundaries."""
    trace, layers = dense_trace(model, ids, mids=unit == "mlp"), decoder_layers(model)
    scores = {}
    for i in tqdm(cands, desc=f"ppl criterion ({unit})", leave=False):
        if unit == "block":
            hidden = trace.hidden[i]
        elif unit == "mlp":
            hidden = trace.mid[i]  # block i without its MLP ends at the post-attention residual
        else:
            with skip_sublayer(model, i, unit):
                hidden = layers[i](trace.hidden[i], **trace.kwargs[i])
        scores[i] = perplexity(model, run_from(model, trace, i + 1, hidden), ids)
    return scores


@torch.no_grad()
def ppl_scores_naive(model, ids, cands, unit: str = "block") -> dict[int, float]:
    """Reference for `ppl_scores`: one full forward per candidate, with it skipped."""
    scores = {}
    for i in tqdm(cands, desc=f"ppl criterion, naive ({unit})", leave=False):
        ctx = skip_blocks(model, [i]) if unit == "block" else skip_sublayer(model, i, unit)
        with ctx:
            hidden = final_hidden(model, ids)
        scores[i] = perplexity(model, hidden, ids)
    return scores


def _unit_params(model, i: int, unit: str, weights_only: bool = False) -> list[nn.Parameter]:
    adapter = adapter_for(model)
    seen, out = set(), []
    for module in adapter.unit_modules(adapter.layers(model)[i], unit):
        for name, p in module.named_parameters():
            if weights_only and name.endswith("bias"):
                continue
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def taylor_scores(model, ids, cands, unit: str = "block") -> dict[int, float]:
    """sum |w * dL/dw| over each candidate's weights (norms included, biases left out, as in
    Shortened LLaMA's code), accumulated by post-accumulate-grad hooks."""
    groups = {i: _unit_params(model, i, unit, weights_only=True) for i in cands}
    owner = {id(p): i for i, params in groups.items() for p in params}
    sums = {i: torch.zeros((), dtype=torch.float64, device=model.device) for i in cands}

    def fold(p):
        sums[owner[id(p)]] += (p.detach().float() * p.grad.float()).abs().sum().double()

    with streamed_grads(model, [p for params in groups.values() for p in params], fold):
        lm_loss(model, final_hidden(model, ids), ids).backward()
    return {i: s.item() for i, s in sums.items()}


@torch.no_grad()
def magnitude_scores(model, cands, unit: str = "block") -> dict[int, float]:
    """sqrt(sum of squared Frobenius norms) of each candidate's weight matrices."""
    scores = {}
    for i in cands:
        sq = sum(p.double().pow(2).sum() for p in _unit_params(model, i, unit) if p.dim() >= 2)
        scores[i] = math.sqrt(float(sq))
    return scores


def _mean_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1).mean()


@torch.no_grad()
def block_influence_scores(model, ids, cands, unit: str = "block") -> dict[int, float]:
    """1 - mean cosine between what enters and what leaves the block (or sublayer)."""
    t = dense_trace(model, ids, mids=unit != "block")
    ends = {
        "block": lambda i: (t.hidden[i], t.hidden[i + 1]),
        "attn": lambda i: (t.hidden[i], t.mid[i]),
        "mlp": lambda i: (t.mid[i], t.hidden[i + 1]),
    }[unit]
    return {i: 1.0 - _mean_cosine(*ends(i)).item() for i in cands}


@torch.no_grad()
def angular_scores(model, ids, cands, n: int) -> dict[int, float]:
    """Angular distance between h_l and h_{l+n} for every window l..l+n-1 inside `cands`."""
    t, allowed = dense_trace(model, ids, mids=False), set(cands)
    scores = {}
    for start in cands:
        if all(j in allowed for j in range(start, start + n)):
            cos = F.cosine_similarity(t.hidden[start].float(), t.hidden[start + n].float(), dim=-1)
            scores[start] = (torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi).mean().item()
    return scores


def random_scores(cands, seed: int) -> dict[int, float]:
    values = torch.rand(
        len(cands), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return {i: float(v) for i, v in zip(cands, values, strict=True)}


def score(model, criterion: str, ids, cands, unit: str = "block", n: int = 1, seed: int = 0):
    """Dispatch to one criterion; `n` is used by angular only, `seed` by random only."""
    if criterion in BLOCK_ONLY and unit != "block":
        raise ValueError(f"criterion {criterion!r} supports unit 'block' only, got {unit!r}")
    scorers = {
        "ppl": lambda: ppl_scores(model, ids, cands, unit),
        "taylor": lambda: taylor_scores(model, ids, cands, unit),
        "magnitude": lambda: magnitude_scores(model, cands, unit),
        "block_influence": lambda: block_influence_scores(model, ids, cands, unit),
        "angular": lambda: angular_scores(model, ids, cands, n),
        "last": lambda: {i: float(-i) for i in cands},
        "random": lambda: random_scores(cands, seed),
    }
    if criterion not in scorers:
        raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    return scorers[criterion]()

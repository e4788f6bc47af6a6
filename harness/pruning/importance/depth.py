"""Depth-pruning criteria: one importance score per candidate block (higher = more important).

Every function takes the model, the calibration ids [n, seq] and the candidate indices, and
returns {index: score} for exactly those candidates. With `unit="attn"`/`"mlp"` a score is for
removing only that sublayer of the block. Loss everywhere is the mean next-token cross-entropy
over all calibration tokens.

- ppl: calibration perplexity with the block removed (Shortened LLaMA). `ppl_scores` makes
  one block-by-block pass carrying one residual stream per candidate, so candidate i runs only
  blocks i+1..L-1 and each block is loaded once; `ppl_scores_naive` runs the whole model once
  per candidate. Both give the same numbers.

ppl, block_influence and angular run block by block (harness.pruning.importance.sequential): one block on
the compute device at a time plus the hidden states they keep, so a model larger than the
device can be scored from CPU memory.
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
from harness.pruning.importance.grads import streamed_grads
from harness.pruning.importance.registry import DepthCriterion, register_depth
from harness.pruning.importance.sequential import compute_device, head_on, walk


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
def ppl_scores(model, ids, cands, unit: str = "block", device=None) -> dict[int, float]:
    """Perplexity with each candidate removed, in one block-by-block pass (harness.pruning.
    sequential): at block j the dense stream and the stream of every candidate i < j (the
    residual stream without i, started at i's input, or for mlp at its post-attention state)
    go through block j, so each block is loaded once and candidate i costs only the blocks
    after it."""
    device = compute_device(model, device)
    adapter, wanted, streams, mids = adapter_for(model), set(cands), {}, {}

    def capture_mid(i, layer):
        if unit != "mlp" or i not in wanted:
            return []
        return [adapter.mid_module(layer).register_forward_pre_hook(
            lambda _m, args: mids.__setitem__(i, args[0]))]

    def advance(j, layer, kwargs, hidden_in):
        for i in streams:
            streams[i] = layer(streams[i], **kwargs)
        if j in wanted:
            if unit == "block":
                streams[j] = hidden_in
            elif unit == "mlp":
                streams[j] = mids.pop(j)  # block j without its MLP ends after attention
            else:
                with skip_sublayer(model, j, unit):
                    streams[j] = layer(hidden_in, **kwargs)

    for _ in tqdm(walk(model, ids, device, capture_mid, advance), desc=f"ppl criterion ({unit})",
                  total=len(decoder_layers(model)), leave=False):
        pass
    with head_on(model, device):
        return {i: perplexity(model, streams[i], ids) for i in cands}


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
def block_influence_scores(model, ids, cands, unit: str = "block",
                           device=None) -> dict[int, float]:
    """1 - mean cosine between what enters and what leaves the block (or sublayer), block by
    block (harness.pruning.importance.sequential)."""
    adapter, wanted, mids, scores = adapter_for(model), set(cands), {}, {}

    def capture_mid(i, layer):
        if unit == "block" or i not in wanted:
            return []
        return [adapter.mid_module(layer).register_forward_pre_hook(
            lambda _m, args: mids.__setitem__(i, args[0]))]

    for i, h_in, h_out in walk(model, ids, compute_device(model, device), capture_mid):
        if i in wanted:
            a, b = {"block": (h_in, h_out), "attn": (h_in, mids.get(i)),
                    "mlp": (mids.get(i), h_out)}[unit]
            scores[i] = 1.0 - _mean_cosine(a, b).item()
        if i >= max(cands, default=-1):
            break
    return {i: scores[i] for i in cands}


@torch.no_grad()
def angular_scores(model, ids, cands, n: int, device=None) -> dict[int, float]:
    """Angular distance between h_l and h_{l+n} for every window l..l+n-1 inside `cands`, block
    by block, keeping only the last n block boundaries."""
    allowed, kept, scores = set(cands), {}, {}
    for i, h_in, h_out in walk(model, ids, compute_device(model, device)):
        kept[i] = h_in
        start = i + 1 - n  # the window start..i ends at h_out
        if start in allowed and all(j in allowed for j in range(start, start + n)):
            cos = F.cosine_similarity(kept[start].float(), h_out.float(), dim=-1)
            scores[start] = (torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi).mean().item()
        kept.pop(start, None)
        if start >= max(cands, default=-1):
            break
    return scores


def random_scores(cands, seed: int) -> dict[int, float]:
    values = torch.rand(
        len(cands), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return {i: float(v) for i, v in zip(cands, values, strict=True)}


for _crit in (
    DepthCriterion("ppl", lambda c: ppl_scores(c.model, c.calib, c.candidates, c.unit),
                   needs=frozenset({"losses"})),
    DepthCriterion("taylor", lambda c: taylor_scores(c.model, c.calib, c.candidates, c.unit),
                   needs=frozenset({"gradients"})),
    DepthCriterion("magnitude", lambda c: magnitude_scores(c.model, c.candidates, c.unit)),
    DepthCriterion("block_influence", needs=frozenset({"activations"}),
                   scorer=lambda c: block_influence_scores(c.model, c.calib, c.candidates, c.unit)),
    DepthCriterion("angular", lambda c: angular_scores(c.model, c.calib, c.candidates, c.n),
                   needs=frozenset({"activations"}), units=("block",), window=True),
    DepthCriterion("last", lambda c: {i: float(-i) for i in c.candidates}),
    DepthCriterion("random", lambda c: random_scores(c.candidates, c.cfg.seed),
                   key_fields=("seed",)),
):
    register_depth(_crit)

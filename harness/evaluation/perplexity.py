"""Perplexity exactly as PROTOCOL.md defines it.

The split's token stream is cut into non-overlapping windows of `seq_len` tokens (the last partial
window is dropped); PPL = exp(total next-token NLL / number of predicted tokens) over all windows,
so each window predicts `seq_len - 1` tokens. Models trained with a leading BOS token (Gemma;
the adapter's `needs_bos`) get one before each window: it conditions the window but is not a
target, so the same `seq_len - 1` tokens per window are scored.

The windows are also the unit of a bootstrap: PPL recomputed on `BOOT_SAMPLES` resamples of
the windows (with replacement, fixed seed) gives `boot_std` and a 95% interval (`boot_lo`,
`boot_hi`), the error bar of a PPL figure from the evaluation text alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.data.text import source_identity, token_ids
from harness.evaluation.registry import EvalContext, Evaluation, register
from harness.models.adapters import adapter_for

BOOT_SAMPLES, BOOT_SEED = 1000, 0


def windows(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[n_windows, seq_len] non-overlapping windows of a 1-D id stream, last partial one dropped."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    n = ids.numel() // seq_len
    return ids[: n * seq_len].view(n, seq_len)


def with_bos(batch: torch.Tensor, bos_id: int) -> torch.Tensor:
    """[n, 1 + len] rows: `bos_id`, then each row of the [n, len] `batch`."""
    return torch.cat([torch.full_like(batch[:, :1], bos_id), batch], dim=1)


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    ids: torch.Tensor,
    seq_len: int = 128,
    batch_size: int = 8,
    desc: str = "ppl",
    progress: bool = True,
    bos_id: int | None = None,
) -> dict[str, float]:
    """{'ppl', 'nll', 'tokens', 'predicted', 'boot_std', 'boot_lo', 'boot_hi'} of `model` on
    the 1-D token stream `ids`.

    `tokens` counts the tokens in all windows (PROTOCOL.md's "tokens scored"); `predicted` the
    next-token targets the mean NLL runs over (seq_len - 1 per window). `bos_id`: a token put
    before every window (not scored)."""
    device = next(model.parameters()).device
    chunks = windows(ids, seq_len)
    total_nll, total_tokens, per_window = 0.0, 0, []
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(chunks), batch_size), desc=desc, disable=not progress):
        batch = chunks[start : start + batch_size].to(device)
        inputs = batch if bos_id is None else with_bos(batch, bos_id)
        logits = model(input_ids=inputs, use_cache=False).logits[:, -batch.size(1):-1].float()
        targets = batch[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                              reduction="none").view(targets.shape)
        per_window.append(nll.double().sum(1).cpu())
        total_nll += nll.sum().item()
        total_tokens += targets.numel()
    model.train(was_training)
    if total_tokens == 0:
        raise ValueError(f"text too short for one window of {seq_len} tokens")
    mean = total_nll / total_tokens
    return {"ppl": math.exp(mean), "nll": mean, "tokens": chunks.numel(),
            "predicted": total_tokens, **bootstrap(torch.cat(per_window), seq_len - 1)}


def bootstrap(window_nll: torch.Tensor, predicted_per_window: int) -> dict[str, float]:
    """Std and 95% percentile interval of PPL over resamples of the windows (each window
    predicts the same number of tokens, so a resample's PPL is exp(mean window NLL / count))."""
    g = torch.Generator().manual_seed(BOOT_SEED)
    picks = torch.randint(0, len(window_nll), (BOOT_SAMPLES, len(window_nll)), generator=g)
    ppl = torch.exp(window_nll[picks].mean(1) / predicted_per_window)
    lo, hi = torch.quantile(ppl, torch.tensor([0.025, 0.975], dtype=ppl.dtype)).tolist()
    return {"boot_std": ppl.std().item(), "boot_lo": lo, "boot_hi": hi}


def bos_id(model, tokenizer) -> int | None:
    """The BOS token to put before every window, for families trained with one."""
    return tokenizer.bos_token_id if adapter_for(model).needs_bos else None


def _run(ctx: EvalContext, label: str, fields: dict) -> dict:
    source = label.removeprefix("ppl/")
    ids = token_ids(source, ctx.tokenizer())
    model = ctx.model()
    return perplexity(model, ids, fields["seq_len"], ctx.spec.eval.batch_size, desc=source,
                      bos_id=bos_id(model, ctx.tokenizer()))


def _metrics(label: str, fields: dict, result: dict) -> dict:
    out = {label: result["ppl"], f"{label}/tokens": result["tokens"]}
    for name in ("boot_std", "boot_lo", "boot_hi"):  # absent from older cache entries
        if name in result:
            out[f"{label}/{name}"] = result[name]
    return out


register(Evaluation(
    "ppl", keys=lambda spec: {f"ppl/{s}": {"source": source_identity(s), "seq_len": spec.eval.seq_len}
                              for s in spec.eval.ppl_sources},
    run=_run, metrics=_metrics))

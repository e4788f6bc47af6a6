"""Generation speed: prefill latency, decode ms/token, end-to-end latency, memory, bandwidth use.

Two backends (`SpeedConfig.backend`):

- `hf`: plain `model.generate` (dynamic KV cache), the Shortened LLaMA protocol.
- `static`: greedy decoding over a `transformers.StaticCache` by `StaticDecoder`; with
  `compile=True` the one-token step is `torch.compile(mode="reduce-overhead")`d (CUDA graphs on
  GPU). Same greedy tokens as `hf` (tested).

Each run forces the output length (EOS disabled, `min_new_tokens = max_new_tokens`) after a
seeded random prompt. Per (batch size, output length): `warmup` untimed runs, then `repeats` timed
pairs of runs (N new tokens, and 1 new token = prefill + first token); medians with min/max.
`decode_ms = (e2e - prefill) / (N - 1)` per pair. Timing uses CUDA events on GPU.

Memory-bandwidth limit of a decode step: the bytes it must read, weights (`decode_weight_bytes`)
plus the KV cache at the mean decode context `prompt_len + N/2`, over the device's copy
bandwidth measured here (`2 * bytes / time` of a large device-to-device copy).
`bw_frac = limit_ms / decode_ms` (1.0 = at the bandwidth limit).

An out-of-memory configuration gives a row with `"oom": True` and the sweep goes on.
On CPU everything runs (rows say `device="cpu"`); peak memory is then None.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time

import torch
from transformers import GenerationConfig, StaticCache

from harness.evaluation.config import SpeedConfig
from harness.evaluation.efficiency import decode_weight_bytes, kv_cache_bytes
from harness.evaluation.registry import Evaluation, register
from harness.io import write_json_atomic
from harness.models import cache_kwarg
from harness.models.params import count_params

__all__ = ["SpeedConfig", "StaticDecoder", "benchmark_speed", "device_bandwidth", "speed_metrics"]

ROW_KEYS = (
    "backend", "device", "dtype", "batch_size", "prompt_len", "output_len", "oom",
    "prefill_ms", "prefill_ms_min", "prefill_ms_max", "decode_ms", "decode_ms_min",
    "decode_ms_max", "e2e_ms", "e2e_ms_min", "e2e_ms_max", "tokens_per_s", "bytes_per_step",
    "bw_limit_ms", "bw_frac", "device_bw_gbs", "peak_alloc_gib", "peak_reserved_gib",
    "params", "weight_bytes", "compiled",
)  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device):
    """(milliseconds, result) of `fn()`; CUDA events on GPU, perf_counter elsewhere."""
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end), result
    t0 = time.perf_counter()
    result = fn()
    return (time.perf_counter() - t0) * 1e3, result


def device_bandwidth(
    device: torch.device | str, nbytes: int | None = None, iters: int = 10
) -> float:
    """Measured copy bandwidth in bytes/s: `2 * nbytes / time` (read + write) of a tensor copy."""
    device = torch.device(device)
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 26)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = [_timed(lambda: dst.copy_(src), device)[0] for _ in range(iters)]
    return 2 * nbytes / (statistics.median(times) / 1e3)


def _random_prompts(model, batch: int, prompt_len: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=gen)
    return ids.to(next(model.parameters()).device)


def hf_generate(model, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Exactly `new_tokens` greedy tokens [batch, new_tokens] from plain `model.generate`."""
    gc_ = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,  # forced length: never stop early
        pad_token_id=0,
        use_cache=True,
    )
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc_)
    return out[:, ids.shape[1] :]


class StaticDecoder:
    """Greedy decoding over a `StaticCache` of `max_len` tokens; `compile` the one-token step.

    The prefill runs eagerly; each decode step is one call of the (compiled) step function. The
    cache layers allocate lazily from the first keys they see, so layers with fewer KV heads
    (width pruning) and fewer layers (depth pruning, with `config.num_hidden_layers` fixed) work.
    """

    def __init__(self, model, max_len: int, compile: bool = True):
        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.max_len = max_len
        self.cache_arg = cache_kwarg(model)
        self.step = self._step
        if compile:
            cuda = next(model.parameters()).device.type == "cuda"
            mode = "reduce-overhead" if cuda else None  # CUDA graphs need a GPU
            self.step = torch.compile(self._step, mode=mode, fullgraph=True)

    def _step(self, token: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=token, use_cache=True, **{self.cache_arg: self.cache})
        return out.logits[:, -1].argmax(-1, keepdim=True)

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        if ids.shape[1] + new_tokens > self.max_len:
            raise ValueError(
                f"{ids.shape[1]}+{new_tokens} tokens exceed the cache ({self.max_len})"
            )
        self.cache.reset()
        out = self.model(
            input_ids=ids, use_cache=True, logits_to_keep=1, **{self.cache_arg: self.cache}
        )
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [token]
        for _ in range(new_tokens - 1):
            # clone: a CUDA-graph output is overwritten by the next replay
            token = self.step(token).clone()
            tokens.append(token)
        return torch.cat(tokens, dim=1)


def _peak(device: torch.device) -> tuple[float | None, float | None]:
    if device.type != "cuda":
        return None, None
    gib = 1 << 30
    allocated, reserved = (
        torch.cuda.max_memory_allocated(device),
        torch.cuda.max_memory_reserved(device),
    )
    return allocated / gib, reserved / gib


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def _measure(run, ids, new_tokens: int, cfg: SpeedConfig, device: torch.device) -> dict:
    """Warm-up, then `repeats` timed pairs (N tokens, 1 token) of `run(ids, n)`."""
    for _ in range(cfg.warmup):
        run(ids, new_tokens)
        run(ids, 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    e2e, prefill, decode = [], [], []
    for _ in range(cfg.repeats):
        t_all, _ = _timed(lambda: run(ids, new_tokens), device)
        t_one, _ = _timed(lambda: run(ids, 1), device)
        e2e.append(t_all)
        prefill.append(t_one)
        decode.append((t_all - t_one) / (new_tokens - 1))
    row = {}
    for name, values in (("e2e_ms", e2e), ("prefill_ms", prefill), ("decode_ms", decode)):
        row[name], row[f"{name}_min"], row[f"{name}_max"] = _spread(values)
    row["tokens_per_s"] = ids.shape[0] * new_tokens / (row["e2e_ms"] / 1e3)
    row["peak_alloc_gib"], row["peak_reserved_gib"] = _peak(device)
    return row


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@torch.no_grad()
def benchmark_speed(model, cfg: SpeedConfig | None = None) -> list[dict]:
    """One row per (batch size, output length) for `cfg.backend`; keys in `ROW_KEYS`."""
    cfg = (cfg or SpeedConfig()).validate()
    model.eval()
    param = next(model.parameters())
    device = param.device
    bandwidth = device_bandwidth(device)
    weights = decode_weight_bytes(model)
    base = {
        "backend": cfg.backend,
        "device": device.type,
        "dtype": str(param.dtype).removeprefix("torch."),
        "prompt_len": cfg.prompt_len,
        "device_bw_gbs": bandwidth / 1e9,
        "params": count_params(model)["total"],
        "weight_bytes": weights,
        "compiled": cfg.backend == "static" and cfg.compile,
    }
    max_len = cfg.prompt_len + max(cfg.output_lengths)
    rows = []
    for batch in cfg.batch_sizes:
        run = None
        for new_tokens in cfg.output_lengths:
            row = dict.fromkeys(ROW_KEYS) | base | {"batch_size": batch, "output_len": new_tokens}
            try:
                ids = _random_prompts(model, batch, cfg.prompt_len, cfg.seed)
                if run is None and cfg.backend == "static":
                    if cfg.compile:
                        torch._dynamo.reset()  # fresh graphs per batch size (recompile limit)
                    run = StaticDecoder(model, max_len, compile=cfg.compile)
                elif run is None:
                    run = lambda x, n: hf_generate(model, x, n)  # noqa: E731
                row |= _measure(run, ids, new_tokens, cfg, device) | {"oom": False}
            except RuntimeError as e:  # torch.OutOfMemoryError is one
                if not _is_oom(e):
                    raise
                row["oom"], run, ids = True, None, None
            if row["oom"]:
                _release(device)  # outside `except`: its traceback no longer pins tensors
            else:
                context = cfg.prompt_len + new_tokens / 2  # mean context of the decode steps
                step_bytes = weights + kv_cache_bytes(model, context, batch, param.element_size())
                row["bytes_per_step"] = int(step_bytes)
                row["bw_limit_ms"] = step_bytes / bandwidth * 1e3
                if row["decode_ms"] > 0:
                    row["bw_frac"] = row["bw_limit_ms"] / row["decode_ms"]
            rows.append(row)
        run = None
        _release(device)
    return rows


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def speed_metrics(rows: list[dict]) -> dict:
    """Flatten rows to `speed/<backend>/bs<B>/out<N>/<key>` metrics (oom as 0/1)."""
    keys = ("prefill_ms", "decode_ms", "e2e_ms", "tokens_per_s", "bw_frac", "peak_alloc_gib")
    out = {}
    for r in rows:
        prefix = f"speed/{r['backend']}/bs{r['batch_size']}/out{r['output_len']}"
        out[f"{prefix}/oom"] = int(bool(r["oom"]))
        for k in keys:
            if r.get(k) is not None:
                out[f"{prefix}/{k}"] = r[k]
    return out


def device_name() -> str:
    """The hardware speed figures belong to (part of their cache key)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def _keys(spec) -> dict:
    speed = spec.eval.speed
    return {"speed": {"speed": speed.key_fields(), "device": device_name()}} if speed.enabled else {}


register(Evaluation(
    "speed", keys=_keys,
    run=lambda ctx, label, fields: benchmark_speed(ctx.model(), ctx.spec.eval.speed),
    metrics=lambda label, fields, rows: {**speed_metrics(rows), "speed/device": fields["device"]},
    files=lambda ctx, rows: write_json_atomic(ctx.run_dir / "speed.json", rows),
    real_weights=False))

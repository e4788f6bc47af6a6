"""Evaluation inside a serving engine: `eval.engine=llamacpp`.

The final model is written as a GGUF file (`harness.export.gguf_file`, weight type
`eval.llamacpp.dtype`, f32 by default) and run by llama.cpp (llama-cpp-python, the `engines`
extra). Two measurements, each its own cache entry like every evaluation:

- `engine/ppl/<source>`: PPL from llama.cpp's own logits on exactly the token windows of the HF
  evaluation (`perplexity.windows` of the same ids, the same BOS rule), so tokenizer differences
  cannot enter; four windows go through one decode as separate sequences.
- `engine/speed`: prefill and decode tokens/s at batch 1 and at `batch` sequences: a prompt of
  `prompt_len` tokens per sequence in one decode, then `gen_len` one-token steps per sequence
  (every step's logits computed, as when sampling); `warmup` untimed runs, median of `repeats`.
  The row states the engine version, weight type and thread count (`threads`, pinned for both
  prefill and decode).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.data.text import source_identity, token_ids
from harness.evaluation.perplexity import bootstrap, bos_id, windows, with_bos
from harness.evaluation.registry import EvalContext, Evaluation, register

ENGINES = ("none", "llamacpp")


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def require() -> None:
    if not available():
        raise ValueError("eval.engine=llamacpp needs llama-cpp-python: pip install "
                         "'width-vs-depth[engines]' (or `make engines`)")


class Engine:
    """One llama.cpp model + context (low-level API: several sequences per decode)."""

    def __init__(self, gguf: str | Path, n_ctx_seq: int, n_seq: int, threads: int):
        import llama_cpp as L
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp's load and context logs: errors only
        self.L = L
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(gguf).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx_seq * n_seq
        cp.n_batch = cp.n_ubatch = n_ctx_seq * n_seq
        cp.n_seq_max = n_seq
        cp.kv_unified = True
        cp.n_threads = cp.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.batch = L.llama_batch_init(cp.n_batch, 0, n_seq)

    def clear(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def decode(self, seqs: list[list[int]], start: int = 0, logits: str = "all") -> np.ndarray | None:
        """Feed one chunk per sequence (positions from `start`); logits 'all', 'last' or 'none'
        per token; returns [n_outputs, n_vocab] float32 for 'all'."""
        b, n = self.batch, 0
        for s, toks in enumerate(seqs):
            for i, t in enumerate(toks):
                b.token[n], b.pos[n], b.n_seq_id[n] = t, start + i, 1
                b.seq_id[n][0] = s
                b.logits[n] = logits == "all" or (logits == "last" and i == len(toks) - 1)
                n += 1
        b.n_tokens = n
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        if logits != "all":
            return None
        ptr = self.L.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n, self.n_vocab)).copy()

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def engine_perplexity(gguf, ids: torch.Tensor, seq_len: int, bos: int | None, threads: int,
                      per_decode: int = 4) -> dict:
    """`perplexity.perplexity`'s result computed from llama.cpp's logits on the same windows."""
    chunks = windows(ids, seq_len)
    rows = chunks if bos is None else with_bos(chunks, bos)
    width = rows.shape[1]
    eng = Engine(gguf, width, per_decode, threads)
    per_window = []
    try:
        for start in range(0, len(rows), per_decode):
            group = rows[start:start + per_decode]
            eng.clear()
            out = torch.from_numpy(eng.decode([r.tolist() for r in group])).double()
            out = out.view(len(group), width, -1)[:, -seq_len:-1]
            targets = chunks[start:start + per_decode, 1:]
            nll = -torch.log_softmax(out, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            per_window.append(nll.sum(1))
    finally:
        eng.close()
    window_nll = torch.cat(per_window)
    predicted = chunks.shape[0] * (seq_len - 1)
    mean = window_nll.sum().item() / predicted
    return {"ppl": math.exp(mean), "nll": mean, "tokens": chunks.numel(), "predicted": predicted,
            **bootstrap(window_nll, seq_len - 1)}


def engine_speed(gguf, threads: int, batch: int, prompt_len: int, gen_len: int, warmup: int,
                 repeats: int, seed: int = 0) -> dict:
    """{'b<batch>': {prefill_tok_s, decode_tok_s}} at batch 1 and `batch` sequences."""
    rng = np.random.default_rng(seed)
    out = {}
    for n_seq in sorted({1, batch}):
        eng = Engine(gguf, prompt_len + gen_len, n_seq, threads)
        prompts = [rng.integers(3, min(eng.n_vocab, 30000), prompt_len).tolist()
                   for _ in range(n_seq)]
        times = []
        try:
            for r in range(warmup + repeats):
                eng.clear()
                t0 = time.perf_counter()
                eng.decode(prompts, 0, "last")
                t1 = time.perf_counter()
                for step in range(gen_len):
                    eng.decode([[prompts[s][step % prompt_len]] for s in range(n_seq)],
                               prompt_len + step, "last")
                t2 = time.perf_counter()
                if r >= warmup:
                    times.append((t1 - t0, t2 - t1))
        finally:
            eng.close()
        pre = statistics.median(t[0] for t in times)
        dec = statistics.median(t[1] for t in times)
        out[f"b{n_seq}"] = {"prefill_tok_s": n_seq * prompt_len / pre,
                            "decode_tok_s": n_seq * gen_len / dec}
    return out


def engine_version() -> str:
    import llama_cpp

    return f"llama-cpp-python {llama_cpp.__version__}"


def _gguf(ctx: EvalContext, tmp: str) -> Path:
    from harness.export.gguf_file import write_gguf

    path = Path(tmp) / f"model-{ctx.spec.eval.llamacpp.dtype}.gguf"
    write_gguf(ctx.model(), ctx.tokenizer(), path, ctx.spec.eval.llamacpp.dtype)
    return path


def _run(ctx: EvalContext, label: str, fields: dict) -> dict:
    require()
    cfg = ctx.spec.eval.llamacpp
    with tempfile.TemporaryDirectory(prefix="gguf-", dir=ctx.run_dir) as tmp:
        path = _gguf(ctx, tmp)
        if label == "engine/speed":
            result = engine_speed(path, cfg.threads, cfg.batch, cfg.prompt_len, cfg.gen_len,
                                  cfg.warmup, cfg.repeats)
        else:
            source = label.removeprefix("engine/ppl/")
            tok = ctx.tokenizer()
            result = engine_perplexity(path, token_ids(source, tok), fields["seq_len"],
                                       bos_id(ctx.model(), tok), cfg.threads)
    return {**result, "engine": engine_version(), "dtype": cfg.dtype, "threads": cfg.threads}


def _keys(spec) -> dict[str, dict]:
    ev = spec.eval
    if ev.engine in ("none", None):
        return {}
    common = {"engine": ev.engine, "dtype": ev.llamacpp.dtype}
    out = {f"engine/ppl/{s}": {**common, "source": source_identity(s), "seq_len": ev.seq_len}
           for s in ev.ppl_sources}
    if ev.llamacpp.speed:
        from harness.evaluation.speed import device_name

        out["engine/speed"] = {**common, **ev.llamacpp.key_fields(), "device": device_name()}
    return out


def _metrics(label: str, fields: dict, result: dict) -> dict:
    if label == "engine/speed":
        out = {f"engine/speed/{b}/{k}": v for b, r in result.items() if b.startswith("b")
               for k, v in r.items()}
        return {**out, "engine/speed/threads": result["threads"],
                "engine/speed/dtype": result["dtype"], "engine/version": result["engine"]}
    return {label: result["ppl"], f"{label}/tokens": result["tokens"],
            f"{label}/boot_std": result["boot_std"]}


register(Evaluation("engine", keys=_keys, run=_run, metrics=_metrics))

"""HF eager PyTorch vs llama.cpp (f32, q8_0): prefill and decode tokens/s of dense, depth- and
width-pruned SmolLM2 at ~20% and ~35% of total parameters removed, batch 1 and batched, with the
speedup over dense in each engine. Threads pinned (torch and llama.cpp alike) and stated.

    python benchmarks/bench_engine.py --threads 2 --out results/engine_speed.md

Speed depends only on shapes, so the cuts are the self-contained ones of bench_speed.py
(depth: evenly spaced middle blocks; width: uniform heads and MLP channels). HF: `generate`
with the dynamic KV cache (harness.evaluation.speed, backend hf); llama.cpp: the GGUF export
of the same model run by harness.evaluation.engine.engine_speed (prompt in one decode, then
one-token steps, every sequence's logits computed). Run it alone on the machine (QUIET queue).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import depth_prune, width_prune  # noqa: E402

from harness.evaluation.config import SpeedConfig  # noqa: E402
from harness.evaluation.engine import engine_speed, engine_version  # noqa: E402
from harness.evaluation.speed import benchmark_speed  # noqa: E402
from harness.export.gguf_file import write_gguf  # noqa: E402
from harness.models.loader import ModelConfig, load_model  # noqa: E402
from harness.models.params import count_params  # noqa: E402


def variants(removed: list[float], aligns: list[int]):
    """(label, removed, MLP alignment): dense, then depth and one width cut per alignment."""
    yield "dense", 0.0, 1
    for r in removed:
        yield "depth", r, 1
        for a in aligns:
            yield ("width" if a == aligns[0] else f"width x{a}"), r, a


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8, help="the batched setting (and batch 1)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--removed", type=float, nargs="+", default=[0.2, 0.35])
    p.add_argument("--dtypes", nargs="+", default=["f32", "q8_0"])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--align", type=int, nargs="+", default=[8],
                   help="width cuts keep MLP channels in multiples of each (q8_0 quantizes only "
                        "matrices whose input width is a multiple of 32)")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for variant, removed, align in variants(args.removed, args.align):
        model, tok = load_model(ModelConfig(dtype="float32", device="cpu"))
        dense = count_params(model)["total"]
        if variant == "depth":
            depth_prune(model, 1 - removed)
        elif variant.startswith("width"):
            width_prune(model, 1 - removed, align)
        kept = count_params(model)["total"] / dense
        cfg = SpeedConfig(True, "hf", [1, args.batch], [args.gen_len], args.prompt_len,
                          args.warmup, args.repeats, False)
        for r in benchmark_speed(model, cfg):
            b = r["batch_size"]
            rows.append({"variant": variant, "removed": 1 - kept, "engine": "hf eager fp32",
                         "batch": b, "prefill": b * args.prompt_len / r["prefill_ms"] * 1e3,
                         "decode": b / r["decode_ms"] * 1e3})
            print(rows[-1], flush=True)
        for dtype in args.dtypes:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "m.gguf"
                write_gguf(model, tok, path, dtype)
                out = engine_speed(path, args.threads, args.batch, args.prompt_len, args.gen_len,
                                   args.warmup, args.repeats)
            for key, r in out.items():
                rows.append({"variant": variant, "removed": 1 - kept,
                             "engine": f"llama.cpp {dtype}", "batch": int(key[1:]),
                             "prefill": r["prefill_tok_s"], "decode": r["decode_tok_s"]})
                print(rows[-1], flush=True)
        del model
    text = table(rows, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def table(rows: list[dict], args) -> str:
    dense = {(r["engine"], r["batch"]): r for r in rows if r["variant"] == "dense"}
    lines = [
        "# Engine speed: HF eager vs llama.cpp, dense vs depth vs width (SmolLM2-135M, CPU)",
        "",
        f"`python benchmarks/bench_engine.py --threads {args.threads} --batch {args.batch} "
        f"--align {' '.join(map(str, args.align))}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}), {engine_version()}, torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}, **{args.threads} "
        f"threads** for both engines, prompt {args.prompt_len} tokens, {args.gen_len} generated "
        f"tokens per sequence, median of {args.repeats} runs after {args.warmup} warm-up. "
        "tokens/s counts every sequence of the batch; speedup = decode tokens/s over dense's in "
        "the same engine and batch.",
        "",
        "| variant | removed | engine | batch | prefill tok/s | decode tok/s | decode speedup |",
        "|:--|--:|:--|--:|--:|--:|--:|",
    ]
    for r in rows:
        d = dense[(r["engine"], r["batch"])]
        lines.append(f"| {r['variant']} | {100 * r['removed']:.1f}% | {r['engine']} | "
                     f"{r['batch']} | {r['prefill']:.0f} | {r['decode']:.1f} | "
                     f"{r['decode'] / d['decode']:.2f}x |")
    lines += ["", "Depth over width (decode speedup ratio, same size, engine and batch):", ""]
    for removed in sorted({round(r["removed"], 2) for r in rows if r["variant"] == "depth"}):
        for engine, batch in dense:
            def pick(v, e=engine, b=batch, rm=removed):
                return next((r for r in rows if r["variant"] == v and r["engine"] == e
                             and r["batch"] == b and abs(r["removed"] - rm) < 0.05), None)
            dp = pick("depth")
            for label in ["width", *(f"width x{a}" for a in args.align[1:])]:
                wd = pick(label)
                if dp and wd:
                    lines.append(f"- ~{100 * removed:.0f}%, {engine}, batch {batch}: depth "
                                 f"{dp['decode'] / dense[(engine, batch)]['decode']:.2f}x, "
                                 f"{label} {wd['decode'] / dense[(engine, batch)]['decode']:.2f}x"
                                 f" (depth/{label} {dp['decode'] / wd['decode']:.2f})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

"""Cached vs naive PPL block scoring (Shortened LLaMA criterion): block forwards and wall time.

    python benchmarks/bench_depth_ppl.py            # SmolLM2-135M, protocol calibration
    python benchmarks/bench_depth_ppl.py --tiny     # random 30-layer tiny Llama, random ids

Both must give the same scores and ranking (asserted); the cached one should need about half
the block forwards.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from harness.pruning.blocks import count_block_forwards, decoder_layers  # noqa: E402
from harness.pruning.importance.depth import candidates, ppl_scores, ppl_scores_naive  # noqa: E402


def load(args):
    if args.tiny:
        from harness.models.tiny import tiny_model

        model = tiny_model("llama", layers=args.layers, hidden=128, intermediate=256, vocab=512)
        ids = torch.randint(0, 512, (10, 128), generator=torch.Generator().manual_seed(0))
        return model, ids, f"tiny llama, {args.layers} layers"
    from harness.data.protocol import calibration_ids
    from harness.models.loader import load_model

    model, tokenizer = load_model(args.model)
    return model, calibration_ids(tokenizer), args.model


def timed(fn, model, ids, cands, unit):
    start = time.perf_counter()
    with count_block_forwards(model) as counter:
        scores = fn(model, ids, cands, unit)
    return scores, counter.count, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--tiny", action="store_true", help="random tiny model, runs anywhere")
    parser.add_argument("--layers", type=int, default=30, help="layers of the --tiny model")
    parser.add_argument("--unit", default="block", choices=["block", "attn", "mlp"])
    parser.add_argument("--protect-first", type=int, default=4)
    parser.add_argument("--protect-last", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, ids, label = load(args)
    cands = candidates(model, args.unit, args.protect_first, args.protect_last)
    layers = len(decoder_layers(model))
    print(f"model: {label} ({layers} layers, {model.dtype}, {model.device})")
    print(f"calibration: {tuple(ids.shape)}, candidates: {len(cands)} {args.unit}s")

    naive, naive_n, naive_s = timed(ppl_scores_naive, model, ids, cands, args.unit)
    cached, cached_n, cached_s = timed(ppl_scores, model, ids, cands, args.unit)

    print(f"{'':8}{'block forwards':>16}{'wall s':>10}")
    print(f"{'naive':8}{naive_n:>16}{naive_s:>10.2f}")
    print(f"{'cached':8}{cached_n:>16}{cached_s:>10.2f}")
    print(f"ratio cached/naive: forwards {cached_n / naive_n:.3f}, time {cached_s / naive_s:.3f}")

    rank_naive = sorted(naive, key=naive.get)
    rank_cached = sorted(cached, key=cached.get)
    worst = max(abs(naive[i] - cached[i]) / naive[i] for i in cands)
    print(f"max relative score difference: {worst:.2e}")
    print(f"least important first: {rank_cached[:8]} ...")
    assert rank_naive == rank_cached, "cached and naive rankings differ"
    assert worst < 1e-4, "cached and naive scores differ"


if __name__ == "__main__":
    main()

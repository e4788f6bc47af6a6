"""Cost of the measured-loss width criterion next to Taylor's: block calls and wall time, the
unbatched reference (before) and the batched criterion (after) side by side, and whether they
choose the same units.

    python benchmarks/bench_width_loss.py                      # SmolLM2-135M, LLM-Pruner's shape
    python benchmarks/bench_width_loss.py --unit q_head --layer-end -2   # the default layer range
    python benchmarks/bench_width_loss.py --tiny               # random 30-layer tiny Llama
    python benchmarks/bench_width_loss.py --layer-start 20 --samples 4   # a quick look

Taylor needs one forward and one backward over the calibration batch; `loss` reruns blocks
i..L-1 once per attention unit of every pruned layer i (prefix cached, see
harness/pruning/importance/width_loss.py), plus Taylor's pass for the MLP channels. The batched
criterion stacks the streams (same block forwards in rows, fewer and larger calls); the
reference runs one call per stream and block. Both rows include the Taylor pass for the MLP.

FLOPs are counted too (torch's FlopCounterMode, in a separate untimed pass over the first
`--flop-samples` calibration rows, attention run eagerly so its matmuls are counted: the same
arithmetic as SDPA). Nearly every FLOP of the batched criterion is one any exact method must
spend: each unit's loss needs its own stream through every later block and a full-vocabulary LM
head (the streams differ from the dense model and from each other at every position after the
ablated layer), and the MLP channels need Taylor's pass; the exception, the ablated layer's
query/key/value projections recomputed once per unit, is about 1% on SmolLM2. Where time follows FLOPs, as on a CPU, the FLOP ratio is therefore a floor on the
time ratio of any method that computes every unit's exact loss.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from harness.pruning.blocks import count_block_forwards  # noqa: E402
from harness.pruning.importance import width_loss  # noqa: E402
from harness.pruning.importance.registry import WidthCriterion, register_width  # noqa: E402
from harness.pruning.importance.width import score_groups  # noqa: E402
from harness.pruning.width import WidthPruneConfig  # noqa: E402


def load(args):
    if args.tiny:
        from harness.models.tiny import tiny_model

        model = tiny_model("llama", layers=30, hidden=128, heads=4, intermediate=256, vocab=512)
        ids = torch.randint(0, 512, (10, 128), generator=torch.Generator().manual_seed(0))
        return model, ids, "tiny llama, 30 layers"
    from harness.data.protocol import calibration_ids
    from harness.models.loader import load_model

    model, tokenizer = load_model(args.model)
    return model, calibration_ids(tokenizer), args.model


def count_flops(model, cfg: WidthPruneConfig, ids: torch.Tensor) -> int:
    """FLOPs of scoring with `cfg` (attention eager while counting, so its matmuls count)."""
    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        with FlopCounterMode(display=False) as counter:
            score_groups(model, cfg, ids)
    finally:
        model.config._attn_implementation = impl
    return counter.get_total_flops()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--tiny", action="store_true", help="random tiny model, runs anywhere")
    parser.add_argument("--unit", default="kv_group", choices=["kv_group", "q_head"])
    parser.add_argument("--layer-start", type=int, default=4)
    parser.add_argument("--layer-end", type=int, default=28)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--samples", type=int, default=None,
                        help="use only the first N calibration samples (a quick run)")
    parser.add_argument("--flop-samples", type=int, default=1,
                        help="calibration rows for the FLOP count (FLOPs are linear in rows; 0: skip)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, ids, label = load(args)
    ids = ids[: args.samples] if args.samples else ids
    print(f"{label}: {ids.shape[0]} x {ids.shape[1]} calibration tokens, attn_unit={args.unit}, "
          f"layers [{args.layer_start}, {args.layer_end})")
    register_width(WidthCriterion("loss_reference", width_loss.measured_loss_scores_reference,
                                  needs=frozenset({"losses"}), scores_mlp=False))
    rows, scores, flops = [], {}, {}
    for criterion, label in (("taylor", "taylor"), ("loss_reference", "loss before (reference)"),
                             ("loss", "loss after (batched)")):
        cfg = WidthPruneConfig(criterion=criterion, attn_unit=args.unit, ratio=0.2,
                               layer_start=args.layer_start, layer_end=args.layer_end)
        start = time.perf_counter()
        with count_block_forwards(model) as counter:
            scores[criterion] = score_groups(model, cfg, ids)
        rows.append((label, counter.count, time.perf_counter() - start))
        print(f"  {label}: {rows[-1][2]:.1f} s", flush=True)
        if args.flop_samples:
            flops[label] = count_flops(model, cfg, ids[: args.flop_samples])
    taylor_s, taylor_f = rows[0][2], flops.get("taylor")
    print(f"{'criterion':<24} {'block calls':>12} {'seconds':>9} {'x taylor':>9}"
          + (f" {'GFLOP/row':>10} {'FLOPs x taylor':>15}" if flops else ""))
    for label, calls, secs in rows:
        line = f"{label:<24} {calls:>12} {secs:>9.1f} {secs / taylor_s:>9.2f}"
        if flops:
            line += f" {flops[label] / args.flop_samples / 1e9:>10.1f} {flops[label] / taylor_f:>15.2f}"
        print(line)
    if flops:
        print(f"FLOPs counted on {args.flop_samples} calibration row(s), attention eager; the "
              f"batched criterion's FLOPs are a floor for an exact loss criterion: "
              f"{flops['loss after (batched)'] / taylor_f:.2f}x Taylor's")
    ref, new = scores["loss_reference"], scores["loss"]
    same = all(torch.equal(torch.argsort(ref.attn[i]), torch.argsort(new.attn[i])) for i in ref.attn)
    diff = max(float((ref.attn[i] - new.attn[i]).abs().max()) for i in ref.attn)
    print(f"same unit order in every layer: {same}; max |score difference| {diff:.2e}; "
          f"speed-up of the batched criterion {rows[1][2] / rows[2][2]:.2f}x")

if __name__ == "__main__":
    main()

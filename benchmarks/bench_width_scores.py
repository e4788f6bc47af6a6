"""Peak memory and time of importance scoring: width criteria and the depth criteria that read
activations, on one device, each measurement in its own process.

    python benchmarks/bench_width_scores.py                  # SmolLM2-135M, protocol calibration
    python benchmarks/bench_width_scores.py --tiny           # tiny random llama (seconds)
    python benchmarks/bench_width_scores.py --shape llama2_7b --dtype bfloat16 \
        --criteria flap,block_influence,ppl,taylor --no-naive    # 7B shape, bf16 (CPU: ~17 GiB)

Criteria: width ones by name (flap, wanda_sp, taylor, ...), depth ones as block_influence,
angular, ppl or depth_<name> (depth_taylor). `--protect-first` limits the depth candidates
(ppl runs the blocks after each candidate: about 13 forwards of the whole model for a 7B with
the default 26 candidates).

Memory is torch.cuda.max_memory_allocated on GPU; on CPU it is the peak resident set size
(sampled every millisecond), since torch's CPU allocator is invisible to tracemalloc. Printed:
the peak above the level before scoring, and on CPU the peak above the level before the model
was built as a multiple of the weight bytes (model + scoring; the targets are 1.25x for the
activation criteria and 1.6x for taylor). `naive` = one `loss.backward()` keeping every
weight's gradient and scoring afterwards (LLM-Pruner's way), for comparison.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time

import psutil
import torch

from harness.models.adapters import adapter_for
from harness.pruning.depth import DepthPruneConfig, score_blocks
from harness.pruning.importance.registry import WIDTH_CRITERIA
from harness.pruning.importance.width import score_groups
from harness.pruning.width import WidthPruneConfig


class PeakMemory:
    """Peak bytes above the starting level while the block runs (GPU allocator or CPU RSS)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.peak = 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.proc, self.stop = psutil.Process(), threading.Event()
            self.base = self.top = self.proc.memory_info().rss
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.top = max(self.top, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop.set()
            self.thread.join()
            self.peak = self.top - self.base
        self.seconds = time.perf_counter() - self.t0


def naive_taylor(model, cfg, ids) -> None:
    """Full backward with every gradient kept, then |w*g| per member (for comparison only)."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        model(ids, labels=ids, use_cache=False).loss.backward()
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    start = cfg.layer_start % len(layers)
    for i in range(start, cfg.layer_end % len(layers)):
        for kind in ("attn", "mlp"):
            n, ms = adapter.members(layers[i], kind, cfg.attn_unit)
            for m in ms:
                s = m.take((m.param.detach() * m.param.grad).abs().float())
                (s.sum(1 - m.axis) if s.dim() == 2 else s).reshape(n, -1).sum(1)
    model.zero_grad(set_to_none=True)


def shape_model(name: str, dtype: str):
    """A shape-only model whose weights are filled by copying one seeded random block of 2^20
    values (random init of 7B weights takes many minutes on a CPU; any values give the same
    memory and nearly the same time)."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from harness.models.loader import resolve_device, resolve_dtype
    from harness.models.shapes import shape_config

    device = resolve_device("auto")
    config = shape_config(name)
    config._attn_implementation = "sdpa"
    with no_init_weights(), device:
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype, device))
    block = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)) * 0.02
    with torch.no_grad():
        for p in model.parameters():
            flat, src = p.view(-1), block.to(device=p.device, dtype=p.dtype)
            for start in range(0, flat.numel(), src.numel()):
                n = min(src.numel(), flat.numel() - start)
                flat[start:start + n].copy_(src[:n])
    return model.eval()


def load(args):
    if args.tiny:
        from harness.models.tiny import tiny_model

        model = tiny_model("llama", layers=8, hidden=256, heads=8, intermediate=768, vocab=4096)
        return model, torch.randint(3, 4096, (10, 128), generator=torch.Generator().manual_seed(0))
    from harness.models.loader import ModelConfig, load_model

    if args.shape:
        name = args.shape if args.shape.endswith("_shape") else f"{args.shape}_shape"
        model = shape_model(name, args.dtype)
        vocab = model.config.vocab_size
        ids = torch.randint(3, vocab, (10, 128), generator=torch.Generator().manual_seed(0))
        return model, ids
    from harness.data.protocol import calibration_ids

    model, tok = load_model(ModelConfig(name="smollm2_135m", dtype=args.dtype))
    return model, calibration_ids(tok)


def score(model, ids, one: str, protect_first: int) -> None:
    """One criterion: a depth one (block scores) or a width one (groups at a 20% unit ratio)."""
    depth = one.startswith("depth_") or one not in WIDTH_CRITERIA
    name = one.removeprefix("depth_")
    if depth:
        cfg = DepthPruneConfig(criterion=name, num_blocks=4, protect_first=protect_first)
        score_blocks(model, cfg, ids)
    else:
        score_groups(model, WidthPruneConfig(criterion=name, unit_ratio=0.2), ids)


def measure(args) -> None:
    """One measurement in this process: `args.one` is a criterion or 'naive'."""
    rss0 = psutil.Process().memory_info().rss
    model, ids = load(args)
    device = model.get_input_embeddings().weight.device
    ids = ids.to(device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if args.one == "naive":
        for p in model.parameters():
            p.requires_grad_(True)
        with PeakMemory(device) as m:
            naive_taylor(model, WidthPruneConfig(), ids)
    else:
        with PeakMemory(device) as m:
            score(model, ids, args.one, args.protect_first)
        assert all(p.grad is None for p in model.parameters())
    total = "" if m.cuda else (
        f"  model+scoring {(m.top - rss0) / 2**30:6.2f} GiB = {(m.top - rss0) / weights:.3f}x "
        "weights")
    print(
        f"{args.one:16s} {m.seconds:8.2f} s  peak +{m.peak / 2**20:8.1f} MiB{total}  "
        f"(weights {weights / 2**20:.0f} MiB {next(model.parameters()).dtype}, {device}, "
        f"calib {tuple(ids.shape)})",
        flush=True,
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--shape", help="shape-only model, e.g. llama2_7b (random weights)")
    ap.add_argument("--dtype", default="auto", help="model dtype: auto, bfloat16, float32")
    ap.add_argument("--criteria", default="taylor,taylor2,param_mix")
    ap.add_argument("--protect-first", type=int, default=4, help="depth: first candidate block")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive full-gradient run")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        return measure(args)
    # each measurement in a fresh process: freed CPU memory is not handed back reliably
    runs = args.criteria.split(",") + ([] if args.no_naive else ["naive"])
    base = [sys.executable, __file__] + (["--tiny"] if args.tiny else [])
    base += ["--shape", args.shape] if args.shape else []
    base += ["--dtype", args.dtype, "--protect-first", str(args.protect_first)]
    for one in runs:
        subprocess.run(base + ["--one", one], check=True)


if __name__ == "__main__":
    main()

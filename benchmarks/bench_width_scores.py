"""Peak memory and time of gradient-based width scoring (streaming hooks vs a naive backward).

    python benchmarks/bench_width_scores.py                  # SmolLM2-135M, protocol calibration
    python benchmarks/bench_width_scores.py --tiny           # tiny random llama (seconds)
    python benchmarks/bench_width_scores.py --shape llama2_7b   # 7B-shaped random weights (GPU)

Memory is torch.cuda.max_memory_allocated on GPU; on CPU it is the peak resident set size
(sampled every millisecond) above the level before scoring, since torch's CPU allocator is
invisible to tracemalloc. `naive` = one `loss.backward()` keeping every weight's gradient and
scoring afterwards (LLM-Pruner's way), for comparison.
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
from harness.pruning.width import WidthPruneConfig
from harness.pruning.width_scores import score_groups


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


def load(args):
    if args.tiny:
        from harness.models.tiny import tiny_model

        model = tiny_model("llama", layers=8, hidden=256, heads=8, intermediate=768, vocab=4096)
        return model, torch.randint(3, 4096, (10, 128), generator=torch.Generator().manual_seed(0))
    from harness.models.loader import load_model

    if args.shape:
        name = args.shape if args.shape.endswith("_shape") else f"{args.shape}_shape"
        model, _ = load_model(name)
        vocab = model.config.vocab_size
        ids = torch.randint(3, vocab, (10, 128), generator=torch.Generator().manual_seed(0))
        return model, ids
    from harness.data.protocol import calibration_ids

    model, tok = load_model("smollm2_135m")
    return model, calibration_ids(tok)


def measure(args) -> None:
    """One measurement in this process: `args.one` is a criterion or 'naive'."""
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
            score_groups(model, WidthPruneConfig(criterion=args.one, unit_ratio=0.2), ids)
        assert all(p.grad is None for p in model.parameters())
    print(
        f"{args.one:10s} {m.seconds:8.2f} s  peak +{m.peak / 2**20:8.1f} MiB  "
        f"(weights {weights / 2**20:.0f} MiB, {device}, calib {tuple(ids.shape)})",
        flush=True,
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--shape", help="shape-only model, e.g. llama2_7b (random weights; for GPU)")
    ap.add_argument("--criteria", default="taylor,taylor2,param_mix")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive full-gradient run")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        return measure(args)
    # each measurement in a fresh process: freed CPU memory is not handed back reliably
    runs = args.criteria.split(",") + ([] if args.no_naive else ["naive"])
    base = [sys.executable, __file__] + (["--tiny"] if args.tiny else [])
    base += ["--shape", args.shape] if args.shape else []
    for one in runs:
        subprocess.run(base + ["--one", one], check=True)


if __name__ == "__main__":
    main()

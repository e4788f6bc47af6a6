"""Generation speed of dense, depth-pruned and width-pruned shape-only models, both backends.

    python benchmarks/bench_speed.py --shape llama2_7b               # on a GPU
    python benchmarks/bench_speed.py --shape tiny --device cpu --batch-sizes 1 2 --output-lengths 8

Models have random weights (speed depends only on shapes). Pruned versions keep `--fraction` of
the dense total parameters, by a simple self-contained structural cut:
depth = drop evenly spaced middle layers; width = keep the first heads (query and KV alike, so
the GQA ratio holds) and MLP channels of every layer, uniformly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.evaluation.config import SpeedConfig  # noqa: E402
from harness.evaluation.speed import benchmark_speed  # noqa: E402
from harness.models.adapters import adapter_for  # noqa: E402
from harness.models.params import count_params  # noqa: E402
from harness.models.uneven import record_layer_shapes  # noqa: E402
from harness.pruning.blocks import decoder_layers, remove_blocks  # noqa: E402

SHAPES = {
    "llama2_7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, intermediate_size=11008, vocab_size=32000),
    "smollm2_135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                         tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, num_hidden_layers=8, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=256, vocab_size=1024),
}  # fmt: skip


def build(shape: str, device: str, dtype: torch.dtype) -> nn.Module:
    """A random-weight Llama of `shape` on `device` (sdpa attention)."""
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def _per_layer_params(model) -> int:
    return sum(p.numel() for p in decoder_layers(model)[0].parameters())


def depth_prune(model: nn.Module, fraction: float) -> nn.Module:
    """Drop evenly spaced middle layers until ~`fraction` of the total parameters remain."""
    layers = decoder_layers(model)
    total = count_params(model)["total"]
    n_drop = round((1 - fraction) * total / _per_layer_params(model))
    middle = list(range(1, len(layers) - 1))
    n_drop = max(0, min(n_drop, len(middle)))
    step = len(middle) / max(n_drop, 1)
    return remove_blocks(model, {middle[int(step * i + step / 2)] for i in range(n_drop)})


def width_prune(model: nn.Module, fraction: float, align: int = 8) -> nn.Module:
    """Keep the first heads and MLP channels (a multiple of `align`) of every layer: ~`fraction`
    of total parameters."""
    cfg, adapter = model.config, adapter_for(model)
    layers = adapter.layers(model)
    total, per_layer = count_params(model)["total"], _per_layer_params(model)
    ratio = (fraction * total - (total - per_layer * len(layers))) / (per_layer * len(layers))
    ratio = min(max(ratio, 0.05), 1.0)
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    kv = max(1, round(cfg.num_key_value_heads * ratio))
    heads, channels = kv * groups, max(align, round(cfg.intermediate_size * ratio / align) * align)
    for layer in layers:
        adapter.prune_attention(layer, range(heads), range(kv))
        adapter.prune_mlp(layer, range(channels))
    record_layer_shapes(model)  # uniform: the stock config fields
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama2_7b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--variants", nargs="+", default=["dense", "depth", "width"])
    p.add_argument("--fraction", type=float, default=0.8, help="kept share of total params")
    p.add_argument("--backends", nargs="+", default=["hf", "static"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 128])
    p.add_argument("--output-lengths", type=int, nargs="+", default=[128, 512])
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--json", default=None, help="also write all rows to this file")
    args = p.parse_args(argv)
    dtype = getattr(
        torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    )

    rows = []
    for variant in args.variants:
        model = build(args.shape, args.device, dtype)
        dense = count_params(model)["total"]
        if variant == "depth":
            depth_prune(model, args.fraction)
        elif variant == "width":
            width_prune(model, args.fraction)
        kept = count_params(model)["total"] / dense
        for backend in args.backends:
            cfg = SpeedConfig(True, backend, args.batch_sizes, args.output_lengths,
                              args.prompt_len, args.warmup, args.repeats, not args.no_compile)  # fmt: skip
            for row in benchmark_speed(model, cfg):
                rows.append({"variant": variant, "kept": kept, **row})
                print(_line(rows[-1]), flush=True)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


HEADER = (
    f"{'variant':8} {'kept':>5} {'backend':7} {'bs':>4} {'out':>4} {'prefill_ms':>10} "
    f"{'decode_ms':>9} {'e2e_ms':>9} {'tok/s':>8} {'bw_frac':>7} {'peak_GiB':>8}"
)


def _line(r: dict) -> str:
    if not hasattr(_line, "printed"):
        print(HEADER)
        _line.printed = True
    head = f"{r['variant']:8} {r['kept']:5.2f} {r['backend']:7} {r['batch_size']:4} {r['output_len']:4} "
    if r["oom"]:
        return head + "OOM"

    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"

    return head + (
        f"{f(r['prefill_ms'], '10.2f')} {f(r['decode_ms'], '9.3f')} {f(r['e2e_ms'], '9.1f')} "
        f"{f(r['tokens_per_s'], '8.1f')} {f(r['bw_frac'], '7.2f')} {f(r['peak_alloc_gib'], '8.2f')}"
    )


if __name__ == "__main__":
    raise SystemExit(main())

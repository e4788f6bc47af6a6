"""Recovery throughput: training tokens/s and MFU of CPT and LoRA through `recover()`.

    python benchmarks/bench_recovery.py                 # GPU: SmolLM2-135M and a ~1B Llama shape
    python benchmarks/bench_recovery.py --peak-tflops 989 --steps 30 --seq-len 1024

MFU = 6 * N * tokens/s / peak FLOP/s, with N the parameters that take part in matmuls
(non-embedding + LM head) and attention-score FLOPs left out. For LoRA the backward pass skips
the frozen weights' gradients (about 4N rather than 6N per token), so 6N overstates its work.
Timing starts after `--warmup` optimizer steps. On CPU it runs a tiny shape and says so.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, TrainerCallback

from harness.models.params import count_params
from harness.recovery.registry import settings
from harness.recovery.run import recover

LLAMA_1B = dict(
    hidden_size=2048,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=5632,
    vocab_size=32000,
    max_position_embeddings=4096,
)


class StepTimer(TrainerCallback):
    """Wall-clock time at the end of each optimizer step (device synchronised)."""

    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def matmul_params(model) -> int:
    """Parameters that do matmuls: non-embedding weights plus the LM head (tied or not)."""
    return count_params(model)["nonembedding"] + model.get_output_embeddings().weight.numel()


def build(name: str, cuda: bool):
    if name == "smollm2_135m":
        from harness.models.loader import load_model

        return load_model("smollm2_135m")[0]
    if name == "llama_1b":
        cfg = LlamaConfig(**LLAMA_1B)
    elif name == "tiny":
        cfg = LlamaConfig(
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=256,
            vocab_size=512,
        )
    else:
        raise ValueError(f"unknown benchmark model {name!r}")
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    device = torch.device("cuda" if cuda else "cpu")
    with device:
        model = AutoModelForCausalLM.from_config(
            cfg, dtype=torch.bfloat16 if cuda else torch.float32
        )
    return model


def bench(model, method: str, args, vocab: int) -> dict:
    steps = args.warmup + args.steps
    tokens = steps * args.seq_len * args.batch_size
    cfg = settings(
        name=method,
        tokens=tokens,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        save_steps=steps + 1,
        logging_steps=steps,
        disable_tqdm=True,
        gradient_checkpointing=args.gradient_checkpointing,
        warmup_ratio=0.0,
    )
    ids = torch.randint(0, vocab, (tokens,), generator=torch.Generator().manual_seed(0))
    timer = StepTimer()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        model, metrics = recover(model, cfg, ids, out, callbacks=[timer])
    timed = timer.times[args.warmup - 1 :] if args.warmup else timer.times
    span = timed[-1] - timed[0] if len(timed) > 1 else metrics["recover/time_s"]
    tok_s = (
        (len(timed) - 1) * args.seq_len * args.batch_size / span
        if len(timed) > 1
        else metrics["recover/tokens_per_s"]
    )
    n = matmul_params(model)
    return {
        "model": model,
        "method": method,
        "N": n,
        "tokens_per_s": tok_s,
        "mfu": 6 * n * tok_s / (args.peak_tflops * 1e12),
        "mem_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
        "final_loss": metrics["recover/final_loss"],
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        default=None,
        help="comma list from smollm2_135m, llama_1b, tiny (default: GPU both, CPU tiny)",
    )
    p.add_argument("--methods", default="cpt,lora")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense FLOP/s, in TFLOP/s")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=None, help="untimed optimizer steps first")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--gradient-checkpointing", action="store_true")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    defaults = (20, 5, 1024, 8) if cuda else (8, 2, 64, 4)
    for key, value in zip(("steps", "warmup", "seq_len", "batch_size"), defaults, strict=True):
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = (args.models or ("smollm2_135m,llama_1b" if cuda else "tiny")).split(",")
    if cuda:
        print(
            f"device: {torch.cuda.get_device_name()} (bf16 mixed precision), "
            f"peak {args.peak_tflops:g} TFLOP/s"
        )
    else:
        print("device: CPU (fp32, tiny shape: MFU against --peak-tflops is not meaningful)")
    print(
        f"seq_len {args.seq_len}, batch {args.batch_size}, {args.steps} timed steps after "
        f"{args.warmup} warmup, gradient checkpointing {args.gradient_checkpointing}"
    )
    print(
        f"{'model':<14}{'method':<8}{'N (matmul)':>14}{'tokens/s':>12}{'MFU':>8}"
        f"{'peak mem GB':>13}{'loss':>8}"
    )
    rows = []
    for name in names:
        model = build(name, cuda)
        vocab = model.config.vocab_size
        for method in args.methods.split(","):
            row = bench(model, method, args, vocab)
            model = row.pop("model")
            row["name"] = name
            rows.append(row)
            print(
                f"{name:<14}{method:<8}{row['N']:>14,}{row['tokens_per_s']:>12,.0f}"
                f"{row['mfu']:>8.1%}{row['mem_gb']:>13.1f}{row['final_loss']:>8.3f}",
                flush=True,
            )
        del model
        if cuda:
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main()

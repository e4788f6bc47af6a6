"""Peak memory of CPT does not grow with the corpus: ~10 MB vs ~1 GB of generated text.

    python benchmarks/bench_corpus_memory.py                      # 10 MB vs 1000 MB
    python benchmarks/bench_corpus_memory.py --small-mb 1 --large-mb 20 --steps 4   # smoke test

Each corpus is written as `.txt` shards (documents separated by blank lines, 50 MB each at
most) and trained on in a fresh process: the corpus is tokenized into its cached memory-mapped
token file (SmolLM2's tokenizer, streamed through HF datasets), then a tiny Llama with
SmolLM2's vocabulary runs `--steps` CPT steps on it through `recover()`. The child reports its
peak RSS (ru_maxrss: preparation and training) and its RSS after preparation; the benchmark
prints both for both corpora and the ratio, which should stay within 10%. A tiny model keeps
what the corpus could add to memory visible (a large model's weights would hide it).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARD_MB = 50


def write_corpus(root: Path, megabytes: int, seed: int = 0) -> Path:
    """`megabytes` of generated documents in .txt shards: a ~1 MB block of distinct documents,
    repeated with a numbered first line per copy (memory does not depend on the wording)."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(5000)]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(50, 300))) + "."
            for _ in range(700)]
    block = "\n\n".join(docs)
    root.mkdir(parents=True, exist_ok=True)
    written, shard, f = 0, 0, None
    copy = 0
    while written < megabytes << 20:
        if f is None or f.tell() >= SHARD_MB << 20:
            if f is not None:
                f.close()
            f = open(root / f"shard-{shard:04d}.txt", "w", encoding="utf-8")  # noqa: SIM115
            shard += 1
        text = f"Copy {copy}.\n\n{block}\n\n"
        f.write(text)
        written += len(text)
        copy += 1
    f.close()
    return root


def child(corpus: str, cache: str, steps: int) -> None:
    """Prepare and train in this process; print its memory as JSON."""
    import torch

    from harness.cache.store import StageCache
    from harness.models.tiny import tiny_model
    from harness.recovery.corpus import prepare
    from harness.recovery.registry import settings
    from harness.recovery.run import recover

    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    from harness.assets import cache_root

    tok = AutoTokenizer.from_pretrained(cache_root() / "models" / "smollm2_135m")
    cfg = settings("cpt", data=corpus, tokens=steps * 8 * 128, seq_len=128, batch_size=8,
                   save_minutes=0, disable_tqdm=True, bf16="false")
    start = time.perf_counter()
    prepared = prepare(cfg, tok, StageCache(cache))
    prep_s = time.perf_counter() - start
    after_prepare = _rss_mb()
    model = tiny_model("llama", vocab=len(tok))
    with tempfile.TemporaryDirectory() as out:
        _, metrics = recover(model, cfg, None, out, tokenizer=tok, cache=StageCache(cache))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"corpus_tokens": prepared.tokens, "prepare_s": round(prep_s, 1),
                      "rss_after_prepare_mb": round(after_prepare, 1),
                      "peak_rss_mb": round(peak, 1), "steps": metrics["recover/steps"],
                      "epochs": metrics["recover/epochs"]}))


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(mb: int, work: Path, steps: int) -> dict:
    corpus = write_corpus(work / f"corpus-{mb}mb", mb)
    size = sum(p.stat().st_size for p in corpus.iterdir())
    out = subprocess.run([sys.executable, __file__, "--child", str(corpus), str(work / "cache"),
                          str(steps)], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"corpus_mb": round(size / 2**20, 1), **result}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-mb", type=int, default=10)
    parser.add_argument("--large-mb", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        small = measure(args.small_mb, Path(tmp), args.steps)
        print("small:", json.dumps(small), flush=True)
        large = measure(args.large_mb, Path(tmp), args.steps)
        print("large:", json.dumps(large), flush=True)
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    print(f"peak RSS during CPT: {small['corpus_mb']} MB corpus ({small['corpus_tokens']} tokens)"
          f" {small['peak_rss_mb']} MB; {large['corpus_mb']} MB corpus "
          f"({large['corpus_tokens']} tokens) {large['peak_rss_mb']} MB; ratio {ratio:.3f} "
          f"({'within' if abs(ratio - 1) <= 0.10 else 'OUTSIDE'} 10%)")


if __name__ == "__main__":
    main()

"""Helper of tests/test_corpus_ranks.py: one CPT run with a held-out curve on a shard
directory, under torchrun or alone; prints which corpus entries this rank computed."""

import json
import sys
from pathlib import Path

from harness.cache.store import StageCache
from harness.distributed import rank, setup, teardown
from harness.models.tiny import tiny_model, tiny_tokenizer
from harness.recovery.registry import settings
from harness.recovery.run import recover

out, data, held, batch = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
setup()
cache = StageCache(out / "cache")
cfg = settings("cpt", data=data, tokens=32 * 8 * 6, seq_len=32, batch_size=batch, lr=3e-3,
               warmup_ratio=0.0, save_minutes=0, disable_tqdm=True, logging_steps=1,
               eval_every=int(sys.argv[5]) if len(sys.argv) > 5 else 32 * 8 * 2, eval_data=held, eval_tokens=32 * 4)
recover(tiny_model(seed=0), cfg, None, out / "run", tokenizer=tiny_tokenizer(), cache=cache)
print(json.dumps({"rank": rank(), "computed": cache.computed}), flush=True)
teardown()

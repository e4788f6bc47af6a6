"""Two processes under torchrun (gloo, CPU) prepare the tokenized corpus once (rank 0) and
reproduce the one-process loss and held-out curves at the same global batch."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pandas.testing as pdt
from test_distributed import TESTS, TOL, launch, torchrun

DOCS = [f"Doc {i}: {' '.join(f'w{(i * 7 + j) % 23}' for j in range(30 + i % 9))}."
        for i in range(80)]


def _ranks(stdout: str) -> dict[int, list]:
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith('{"rank"')]
    return {r["rank"]: r["computed"] for r in rows}


def test_torchrun_prepares_the_corpus_once_and_gives_the_one_process_curves(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in DOCS[:40]))
    pd.DataFrame({"text": DOCS[40:70]}).to_parquet(shards / "b.parquet")
    held = tmp_path / "held.txt"
    held.write_text("\n\n".join(DOCS[70:]))
    script = str(TESTS / "_corpus_ranks.py")
    one = launch([sys.executable, script, str(tmp_path / "one"), str(shards), str(held), "8"],
                 cwd=tmp_path)
    two = launch(torchrun(script, str(tmp_path / "two"), str(shards), str(held), "4"),
                 cwd=tmp_path)
    assert _ranks(one.stdout) == {0: [_ranks(one.stdout)[0][0]]}
    ranks = _ranks(two.stdout)
    assert len(ranks[0]) == 1 and ranks[0][0].startswith("corpus/") and ranks[1] == []
    assert ranks[0] == _ranks(one.stdout)[0]  # the same key in both
    for log in ("train_log.csv", "eval_log.csv"):
        a, b = (pd.read_csv(tmp_path / d / "run" / log) for d in ("one", "two"))
        assert len(a) == (6 if log == "train_log.csv" else 4)
        pdt.assert_frame_equal(a, b, check_exact=False, atol=TOL, rtol=0)

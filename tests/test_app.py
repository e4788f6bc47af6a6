"""The Hydra app end to end on a tiny on-disk model and a local corpus."""

import json
import subprocess
import sys

import pandas as pd
from test_config import _compose

from harness.config import validate
from harness.pipeline import Run
from harness.sweeps.cache import StageCache


def _overrides(tiny_dir, text_file, tmp_path):
    return [f"model.path={tiny_dir}", f"eval.ppl_sources=[{text_file}]", "eval.seq_len=32",
            f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}"]


def test_second_run_loads_and_computes_nothing(tiny_dir, text_file, tmp_path):
    spec = validate(_compose(_overrides(tiny_dir, text_file, tmp_path)))
    first = Run(spec, tmp_path / "run1")
    m1 = first.execute()
    assert sorted(s.split("/")[0] for s in first.cache.computed) == ["params", "ppl"]
    second = Run(spec, tmp_path / "run2", StageCache(tmp_path / "cache"))
    m2 = second.execute()
    assert second.cache.computed == [] and "load" not in second.times
    assert m1[f"ppl/{text_file}"] == m2[f"ppl/{text_file}"] > 1.0


def test_cli_writes_run_dir_and_one_results_row(tiny_dir, text_file, tmp_path):
    cmd = [sys.executable, "-m", "harness", *_overrides(tiny_dir, text_file, tmp_path)]
    for i in range(2):
        res = subprocess.run(cmd + [f"hydra.run.dir={tmp_path / f'run{i}'}"],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "run0" / "metrics.json").read_text())
    assert metrics["params/total"] == 180_800 and metrics[f"ppl/{text_file}/tokens"] > 0
    assert "model:" in (tmp_path / "run0" / "config.yaml").read_text()
    assert json.loads((tmp_path / "run1" / "stages.json").read_text()) == {"computed": []}
    table = pd.read_csv(tmp_path / "results" / "results.csv")
    assert len(table) == 1 and table.loc[0, "run_dir"].endswith("run1")
    assert "ppl/" in res.stdout  # the printed results table

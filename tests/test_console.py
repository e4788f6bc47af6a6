"""The end-of-sweep table shows what was swept; a single run prints its own row."""

import pandas as pd

from harness.reporting.console import print_rows, run_view, varying_columns
from harness.tracking.results import upsert_row


def _sweep(tmp_path):
    base = {"experiment": "demo", "model": "smollm2_135m", "eval.seq_len": 128,
            "prune.name": "depth", "prune.criterion": "ppl", "recover.name": "lora",
            "recover.lr": 1e-4, "params/total": 1e8}
    rows = []
    for i, (blocks, seed, lr) in enumerate([(4, 1, 1e-4), (8, 1, 1e-4), (4, 2, 1e-3)]):
        rows.append({**base, "run_key": f"k{i}", "prune.num_blocks": blocks,
                     "data.calib_seed": seed, "recover.lora_lr": lr, "recover.lora_r": 8,
                     "ppl/wiki_test": 30.0 + i, "run_dir": str(tmp_path / "sweep" / str(i))})
    rows.append({**base, "run_key": "dense", "prune.name": "none", "recover.name": "none",
                 "ppl/wiki_test": 20.0, "run_dir": str(tmp_path / "other")})
    return rows


def test_varying_keys_then_metrics(tmp_path):
    table = pd.DataFrame(_sweep(tmp_path)[:3])
    assert varying_columns(table) == ["prune.num_blocks", "data.calib_seed", "recover.lora_lr"]
    view = run_view(table)
    assert list(view.columns) == ["prune.num_blocks", "data.calib_seed", "recover.lora_lr",
                                  "ppl/wiki_test", "params/total"]
    assert len(view.drop_duplicates()) == 3  # no two sweep rows look alike


def test_a_key_only_some_rows_have_varies_only_if_its_values_differ(tmp_path):
    table = pd.DataFrame(_sweep(tmp_path)[2:])  # one LoRA row (lora_r 8) and the dense row
    assert varying_columns(table) == ["prune.name", "recover.name"]


def test_sweep_prints_its_own_rows_and_a_run_its_one_row(tmp_path, capsys):
    for row in _sweep(tmp_path):
        upsert_row(tmp_path / "results", row)
    view = print_rows(tmp_path / "results", tmp_path / "sweep", "demo")
    assert len(view) == 3 and 20.0 not in set(view["ppl/wiki_test"])  # not the dense row
    one = print_rows(tmp_path / "results", tmp_path / "sweep" / "1", "this run")
    assert one.to_dict("records") == [{
        "prune.name": "depth", "prune.criterion": "ppl", "prune.num_blocks": 8,
        "recover.name": "lora", "ppl/wiki_test": 31.0, "params/total": 1e8}]
    out = capsys.readouterr().out
    assert "== demo (3 runs) ==" in out and "== this run (1 run) ==" in out

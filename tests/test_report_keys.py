"""Reports never pool rows that differ in a key: one figure line per (method, criterion,
recovery, differing key), a table column for every key that differs, captions that name the
recovery's budget, learning rates and world size."""

import pandas as pd

from harness.reporting.captions import caption
from harness.reporting.differ import differing
from harness.reporting.figures import recovery_vs_fraction
from harness.reporting.report import paper_table


def _table():
    base = {"experiment": "demo", "model": "smollm2_135m", "eval.seq_len": 128,
            "prune.name": "depth", "prune.ratio": 0.2, "prune/ratio_achieved": 0.2,
            "params/total": 1e8, "recover.tokens": 8192, "recover/world_size": 1,
            "recover/global_batch": 8, "recover.seq_len": 128, "data.calib_seed": 1234}
    rows = [
        {**base, "prune.criterion": "ppl", "recover.name": "lora", "recover.lora_lr": 1e-4,
         "ppl/wiki_test": 277.0},
        {**base, "prune.criterion": "taylor", "recover.name": "lora", "recover.lora_lr": 1e-4,
         "ppl/wiki_test": 1.8e7},
        {**base, "prune.criterion": "ppl", "recover.name": "cpt", "recover.lr": 1e-4,
         "ppl/wiki_test": 90.0},
        {**base, "prune.criterion": "ppl", "recover.name": "cpt", "recover.lr": 1e-3,
         "ppl/wiki_test": 70.0},
    ]
    return pd.DataFrame(rows)


def test_differing_keys_exclude_shown_columns_and_seeds():
    table = _table()
    assert differing(table) == ["recover.lr"]  # lora_lr is one value where recorded
    assert differing(table.assign(**{"data.calib_seed": [1, 2, 3, 4]})) == ["recover.lr"]


def test_recovery_figure_draws_each_criterion_and_lr_apart(tmp_path):
    png = recovery_vs_fraction(_table(), tmp_path / "r.png")
    svg = png.with_suffix(".svg").read_text()
    for label in ("depth ppl + lora", "depth taylor + lora", "depth ppl + cpt (lr=0.0001)",
                  "depth ppl + cpt (lr=0.001)"):
        assert label in svg, label
    assert svg.count("errorbar-") == 0  # one row per line: no pooled error bar
    assert "world size 1" in svg and "smollm2_135m" in svg


def test_table_shows_differing_keys_and_caption_names_lr_budget_world():
    table = paper_table(_table())
    assert sorted(table["lr"].dropna().tolist()) == [1e-4, 1e-3]
    text = caption(_table(), "demo")
    assert "recovery budget 8192 tokens" in text and "cpt: full lr 0.0001/0.001" in text
    assert "lora: LoRA lr 0.0001" in text and "world size 1" in text
    assert "rows differ in lr" in text

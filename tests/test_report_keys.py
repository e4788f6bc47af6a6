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


def test_curves_one_figure_per_ratio_and_tokens_to_recover(tmp_path):
    from harness.reporting.report import write_report
    from harness.tracking.results import upsert_row

    base = {"experiment": "curves", "model": "smollm2_135m", "prune.name": "depth",
            "prune.criterion": "ppl", "prune/ratio_achieved": 0.2, "params/total": 1e8,
            "recover.tokens": 4096, "recover.lr": 1e-4, "recover.lora_lr": 1e-4,
            "ppl/wiki_test": 50.0}
    logs = {"lora": [90.0, 80.0, 70.0, 65.0], "cpt": [90.0, 60.0, 50.0, 45.0]}
    for ratio in (0.2, 0.35):
        for method, ppl in logs.items():
            run = tmp_path / f"run-{ratio}-{method}"
            run.mkdir()
            pd.DataFrame({"step": [0, 4, 8, 12], "tokens_seen": [0, 1024, 2048, 3072],
                          "eval_loss": 0.0, "eval_ppl": [p * (1 + ratio) for p in ppl],
                          "phase": method}).to_csv(run / "eval_log.csv", index=False)
            upsert_row(tmp_path, {**base, "run_key": f"{ratio}-{method}", "prune.ratio": ratio,
                                  "recover.name": method, "run_dir": str(run)})
    files = {p.name for p in write_report(tmp_path)}
    assert {"curves_curves_0.2.png", "curves_curves_0.35.png"} <= files
    md = (tmp_path / "curves.md").read_text()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in md.splitlines()]
    table = [r for r in cells if r and r[0] == "20"]
    # target at 20%: LoRA's final 65 x 1.2 = 78; CPT is below it at 1,024 tokens, LoRA at 3,072
    assert [(r[2], r[5], r[6]) for r in table if len(r) == 8] == [("cpt", "78", "1024"), ("lora", "78", "3072")]

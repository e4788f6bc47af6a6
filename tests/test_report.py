"""The report turns a results table into paper-layout tables and figures."""

import pandas as pd

from harness.reporting.captions import caption, regenerate_commands
from harness.reporting.report import (
    experiment_report,
    matched_size_table,
    paper_table,
    write_report,
)
from harness.tracking.results import upsert_row


def _rows():
    base = {"experiment": "demo", "model": "smollm2_135m", "eval.seq_len": 128,
            "zeroshot/convention": "shortened_llama", "zeroshot/limit": 50}
    yield {**base, "run_key": "dense", "prune.name": "none", "recover.name": "none",
           "params/total": 134.5e6, "ppl/wiki_test": 31.5, "zeroshot/mean": 45.0,
           "speed/hf/bs1/out128/decode_ms": 20.0,
           **{f"zeroshot/{t}/acc": 50.0 for t in ("boolq", "piqa", "hellaswag", "winogrande",
                                                  "arc_easy", "arc_challenge", "openbookqa")},
           **{f"zeroshot/{t}/acc_norm": 57.0 for t in ("hellaswag", "arc_challenge",
                                                       "openbookqa")}}
    for method, ppl, ms in (("depth", 60.0, 16.0), ("width", 50.0, 19.5)):
        for recover, gain in (("none", 1.0), ("lora", 0.8)):
            yield {**base, "run_key": f"{method}-{recover}", "prune.name": method,
                   "prune.criterion": "taylor", "prune.ratio": 0.2, "recover.name": recover,
                   "prune/ratio_achieved": 0.2, "params/total": 107.6e6,
                   "ppl/wiki_test": ppl * gain, "zeroshot/mean": 40.0 / gain,
                   "speed/hf/bs1/out128/decode_ms": ms}


def test_paper_table_layout_and_order():
    table = paper_table(pd.DataFrame(list(_rows())))
    assert list(table["Method"]) == ["Dense", "Depth taylor", "Depth taylor", "Width taylor",
                                     "Width taylor"]
    assert list(table.columns[:5]) == ["Method", "Recovery", "Pruned %", "Params (M)",
                                       "PPL wiki_test"]
    assert table.loc[0, "Params (M)"] == 134.5 and table.loc[1, "Pruned %"] == 20.0
    assert "decode ms (hf, bs1)" in table.columns
    no_zeroshot = paper_table(pd.DataFrame(list(_rows())).drop(columns="zeroshot/mean")
                              .assign(**{"zeroshot/boolq": float("nan")}))
    assert "BoolQ" not in no_zeroshot.columns  # a column nobody measured is left out


def test_write_report_writes_tables_and_figures(tmp_path):
    for row in _rows():
        upsert_row(tmp_path, row)
    files = {p.name for p in write_report(tmp_path)}
    assert {"demo.md", "demo.tex", "demo.csv", "demo_ppl_vs_fraction.png",
            "demo_accuracy_vs_speedup.png", "demo_recovery.png"} <= files
    md = (tmp_path / "demo.md").read_text()
    assert "shortened_llama convention" in md and "limit 50 docs per task" in md
    assert "harness experiment=demo" in md and "| Depth taylor" in md
    assert "\\begin{table}" in (tmp_path / "demo.tex").read_text()
    conventions = (tmp_path / "demo_conventions.md").read_text()
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in conventions.splitlines()
            if line.startswith("| Dense")]
    assert [(r[2], r[-1]) for r in rows] == [("shortened_llama", "53"), ("llm_pruner", "50")]


def test_experiment_report_prints_and_writes_only_that_experiment(tmp_path, capsys):
    for row in _rows():
        upsert_row(tmp_path, row)
    upsert_row(tmp_path, {"experiment": "other", "run_key": "x", "model": "m",
                          "params/total": 1e6, "ppl/wiki_test": 9.0})
    files = {p.name for p in experiment_report(tmp_path, "demo")}
    assert "demo.md" in files and not any(f.startswith("other") for f in files)
    out = capsys.readouterr().out
    assert "== demo (5 runs) ==" in out and "Width taylor" in out
    assert experiment_report(tmp_path, "missing") == []


def test_an_experiment_without_speed_rows_gets_no_speed_caption_or_figure(tmp_path):
    for row in _rows():
        upsert_row(tmp_path, row)
    upsert_row(tmp_path, {"experiment": "ppl_only", "run_key": "p", "model": "m",
                          "prune.name": "none", "recover.name": "none", "params/total": 1e6,
                          "ppl/wiki_test": 9.0, "zeroshot/mean": 40.0})
    files = {p.name for p in write_report(tmp_path)}
    assert "demo_accuracy_vs_speedup.png" in files
    assert not any(f.startswith("ppl_only_accuracy") for f in files)
    md = (tmp_path / "ppl_only.md").read_text()
    assert "decode" not in md and "limit" not in md  # demo's columns are not ppl_only's
    assert "| Dense    | none       |          0 |" in md  # a dense-only table still says 0%
    assert "decode ms per generated token" in (tmp_path / "demo.md").read_text()


def test_sweep_end_callback_reports_the_named_experiment(tmp_path, capsys):
    from omegaconf import OmegaConf

    from harness.sweeps.callbacks import PrintResults

    for row in _rows():
        upsert_row(tmp_path, row)
    PrintResults().on_multirun_end(OmegaConf.create({"experiment": "demo",
                                                     "results_dir": str(tmp_path)}))
    out = capsys.readouterr().out.splitlines()
    header = out[out.index("== demo (5 runs) ==") + 1].split()
    assert header[:2] == ["prune.name", "recover.name"]  # what varies, then the metrics
    assert "ppl/wiki_test" in header and "prune.criterion" not in header  # taylor throughout
    assert (tmp_path / "demo.md").exists() and (tmp_path / "demo_ppl_vs_fraction.png").exists()


def test_matched_size_table_puts_depth_next_to_width_without_recovery(tmp_path):
    rows = list(_rows())
    rows.append({**rows[1], "run_key": "depth-35", "prune.ratio": 0.35,
                 "prune/ratio_achieved": 0.342, "ppl/wiki_test": 300.0, "experiment": "other"})
    table = matched_size_table(pd.DataFrame(rows)).set_index("Method")
    assert list(table.index) == ["Depth taylor", "Width taylor"]
    assert table.loc["Depth taylor", "20% wiki_test"] == 60.0  # the no-recovery row, not LoRA's
    assert table.loc["Width taylor", "20% wiki_test"] == 50.0
    assert table.loc["Depth taylor", "35% achieved"] == 34.2
    assert table.loc["Depth taylor", "35% wiki_test"] == 300.0  # from another experiment
    assert pd.isna(table.loc["Width taylor", "35% wiki_test"])
    for row in rows:
        upsert_row(tmp_path, row)
    files = {p.name for p in write_report(tmp_path)}
    assert {"matched_size.md", "matched_size_ppl_vs_fraction_wiki_test.png"} <= files
    assert "other_conventions.md" not in files  # no zero-shot runs there, no empty table
    caption = (tmp_path / "matched_size.md").read_text().split("\n")[0]
    # every experiment that gave a row, with the settings its rows record
    assert "`harness experiment=demo prune.ratio=0.2 eval.zeroshot.limit=50`" in caption
    assert "`harness experiment=other prune.ratio=0.35 eval.zeroshot.limit=50`" in caption


def test_caption_command_names_the_narrowed_sweep():
    rows = pd.DataFrame([{"prune.name": m, "prune.ratio": r, "recover.name": rec,
                          "recover.tokens": 8192}
                         for m in ("depth", "width") for r in (0.5, 0.2)
                         for rec in ("none", "cpt")])
    narrowed = "harness experiment=severe 'prune.ratio=0.2,0.5' recover.tokens=8192"
    assert regenerate_commands(rows, "severe") == [narrowed]
    with_dense = pd.concat([rows, pd.DataFrame([{"prune.name": "none", "recover.name": "none"}])])
    # a dense row the sweep does not make gets its own command...
    assert regenerate_commands(with_dense, "severe") == [
        narrowed, "harness experiment=severe prune=none recover=none hydra.mode=RUN"]
    # ...and a sweep with a dense variant (quick) takes no ratio override, which dense would reject
    assert regenerate_commands(with_dense, "quick") == ["harness experiment=quick recover.tokens=8192"]
    mixed = rows.assign(**{"recover.tokens": [4096] * 4 + [8192] * 4})  # depth 4096, width 8192
    assert regenerate_commands(mixed[mixed["prune.ratio"] == 0.2], "x") == \
        ["harness experiment=x prune.ratio=0.2"]
    dense = pd.DataFrame([{"prune.name": "none", "recover.name": "none"}])
    assert regenerate_commands(dense, "default") == ["harness"]
    assert regenerate_commands(rows, "default")[0].startswith("harness <the overrides")


def test_caption_names_the_eval_settings_and_the_speed_device():
    rows = pd.DataFrame([
        {"run_key": k, "model": "smollm2_135m", "prune.name": name, "prune.ratio": ratio,
         "recover.name": "none", "eval.seq_len": 128, "zeroshot/limit": 100,
         "zeroshot/convention": "shortened_llama", "eval.speed.batch_sizes": "[1, 16]",
         "eval.speed.output_lengths": "[128, 512]", "eval.speed.repeats": 3,
         "eval.speed.warmup": 2, "eval.speed.prompt_len": 128,
         "speed/device": "cpu-x86_64-2cores", "speed/hf/bs1/out128/decode_ms": ms}
        for k, name, ratio, ms in (("d", "none", None, 40.0), ("p", "depth", 0.2, 30.0))])
    evals = "eval.zeroshot.limit=100 'eval.speed.batch_sizes=[1,16]' eval.speed.repeats=3"
    assert regenerate_commands(rows, "cmp") == [
        f"harness experiment=cmp prune.ratio=0.2 {evals}",
        f"harness experiment=cmp prune=none recover=none hydra.mode=RUN {evals}"]
    text = caption(rows, "cmp")
    assert "hf backend, on cpu-x86_64-2cores" in text and "median of 3 runs after 2" in text
    assert f"`harness experiment=cmp prune.ratio=0.2 {evals}`" in text


def test_rows_that_differ_only_by_calibration_seed_become_mean_std_and_n(tmp_path):
    base = {"experiment": "seeds", "model": "smollm2_135m", "eval.seq_len": 128,
            "prune.ratio": 0.2, "recover.name": "none", "prune/ratio_achieved": 0.2,
            "params/total": 107.6e6}
    ppl = {"depth": [100.0, 110.0, 120.0], "width": [70.0, 70.0, 70.0]}
    rows = [{**base, "run_key": f"{m}{s}", "prune.name": m, "prune.criterion": "taylor",
             "data.calib_seed": s, "ppl/wiki_test": ppl[m][s - 1]}
            for m in ppl for s in (1, 2, 3)]
    rows.append({**base, "run_key": "depth-other-ratio", "prune.name": "depth",
                 "prune.criterion": "taylor", "prune.ratio": 0.35, "prune/ratio_achieved": 0.35,
                 "data.calib_seed": 1, "ppl/wiki_test": 300.0})
    table = paper_table(pd.DataFrame(rows))
    assert list(table["n"]) == [3, 3, 1]  # depth 20%, width 20%, depth 35% (one seed)
    assert table.loc[0, "PPL wiki_test"] == "110.00 ± 10.00"  # sample std of 100, 110, 120
    assert table.loc[1, "PPL wiki_test"] == 70.0  # equal across seeds: the value itself
    assert table.loc[2, "PPL wiki_test"] == 300.0
    cap = caption(pd.DataFrame(rows), "seeds")
    assert "mean ± std (sample, ddof=1) over n calibration seeds (data.calib_seed in [1, 2, 3])" in cap
    for row in rows:
        upsert_row(tmp_path, row)
    write_report(tmp_path)
    assert "110.00 ± 10.00" in (tmp_path / "seeds.md").read_text()
    assert matched_size_table(pd.DataFrame(rows)) is None  # not the protocol's seed: not matched


def test_engine_perplexity_sits_beside_the_hf_one_with_the_relative_difference():
    rows = pd.DataFrame(list(_rows()))
    rows["engine/ppl/wiki_test"] = rows["ppl/wiki_test"] * 1.001
    rows["engine/ppl/wiki_test/tokens"] = 1000  # a detail column, not a table column
    table = paper_table(rows)
    assert "PPL wiki_test (llama.cpp)" in table.columns
    assert "PPL tokens (llama.cpp)" not in " ".join(table.columns)
    assert table["engine diff % wiki_test"].tolist() == [0.1] * len(table)


def test_a_reading_below_the_marker_survives_a_rewrite_and_nothing_else_does(tmp_path):
    from harness.reporting.report import READING_MARKER

    for row in _rows():
        upsert_row(tmp_path, row)
    write_report(tmp_path)
    md = tmp_path / "demo.md"
    md.write_text(md.read_text().replace("| Depth taylor", "| EDITED", 1)
                  + f"\n{READING_MARKER}\n\n## Reading\n\nDepth wins.\n")
    write_report(tmp_path)
    text = md.read_text()
    assert "| EDITED" not in text and "| Depth taylor" in text  # the table is regenerated
    assert text.count(READING_MARKER) == 1 and text.endswith("## Reading\n\nDepth wins.\n")

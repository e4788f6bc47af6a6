"""The Hydra app end to end on a tiny on-disk model and a local corpus."""

import json
import subprocess
import sys

import pandas as pd
from test_config import _compose

from harness.cache.store import StageCache
from harness.config import validate
from harness.pipeline import Run


def _overrides(tiny_dir, text_file, tmp_path):
    return [f"model.path={tiny_dir}", f"eval.ppl_sources=[{text_file}]", "eval.seq_len=32",
            f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}"]


def test_second_run_loads_and_computes_nothing(tiny_dir, text_file, tmp_path):
    spec = validate(_compose(_overrides(tiny_dir, text_file, tmp_path)))
    first = Run(spec, tmp_path / "run1")
    m1 = first.execute()
    assert sorted(s.split("/")[0] for s in first.cache.computed) == ["efficiency", "ppl"]
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
    stages = json.loads((tmp_path / "run1" / "stages.json").read_text())
    assert stages["computed"] == [] and sorted(s.split("/")[0] for s in stages["used"]) == [
        "efficiency", "ppl"]  # what `harness cache gc` keeps for this row
    table = pd.read_csv(tmp_path / "results" / "results.csv")
    assert len(table) == 1 and table.loc[0, "run_dir"].endswith("run1")
    assert "ppl/" in res.stdout  # the printed results table


def test_results_row_records_the_speed_grid_only_when_speed_ran(tiny_dir, text_file, tmp_path):
    from harness.identity import run_identity
    from harness.reporting.rows import result_row

    def row(spec, metrics):
        return result_row(spec, run_identity(spec), "k", metrics, tmp_path)

    base = _overrides(tiny_dir, text_file, tmp_path)
    plain = row(validate(_compose(base)), {})
    assert [k for k in plain if k.startswith("eval.speed.")] == ["eval.speed.enabled"]
    assert plain["recover.name"] == "none" and "recover.tokens" not in plain  # off: name only
    assert "data.calib_seed" not in plain  # nothing pruned: calibration plays no part
    lora = row(validate(_compose([*base, "recover=lora", "recover.tokens=1024"])), {})
    assert lora["recover.tokens"] == 1024 and lora["recover.lora_r"] == 8
    assert "recover.kd_alpha" not in lora and "recover.disable_tqdm" not in lora
    spec = validate(_compose([*base, "eval.speed.enabled=true", "eval.speed.repeats=3",
                              "eval.speed.batch_sizes=[1,2]"]))
    speed = row(spec, {"speed/device": "cpu-x86_64-2cores"})
    assert speed["eval.speed.repeats"] == 3 and speed["eval.speed.batch_sizes"] == "[1, 2]"
    assert speed["eval.speed.backend"] == "hf" and speed["speed/device"] == "cpu-x86_64-2cores"
    assert speed["eval.speed.device"].startswith("cpu-")  # speed figures belong to a device


def _prune_overrides(tiny_dir, text_file, tmp_path, *extra):
    return [*_overrides(tiny_dir, text_file, tmp_path), f"data.calib_source={text_file}",
            "data.calib_samples=4", "data.calib_seq_len=16", *extra]


def test_depth_and_width_share_nothing_but_each_scores_once(tiny_dir, text_file, tmp_path):
    depth = ["prune=depth", "prune.criterion=taylor", "prune.protect_first=1",
             "prune.protect_last=1", "prune.ratio=null"]
    cache = StageCache(tmp_path / "cache")
    for n in (1, 2):  # a two-size sweep computes the importance once
        spec = validate(_compose(_prune_overrides(
            tiny_dir, text_file, tmp_path, *depth, f"prune.num_blocks={n}")))
        metrics = Run(spec, tmp_path / f"d{n}", cache).execute()
        assert metrics["prune/num_removed"] == n
        assert (tmp_path / f"d{n}" / "model" / "prune_plan.json").exists()
    stages = [s.split("/")[0] for s in cache.computed]
    assert stages.count("importance") == 1 and stages.count("pruned") == 2
    width = ["prune=width", "prune.criterion=l2", "prune.layer_start=0", "prune.layer_end=4",
             "prune.ratio=0.2"]
    spec = validate(_compose(_prune_overrides(tiny_dir, text_file, tmp_path, *width)))
    metrics = Run(spec, tmp_path / "w", cache).execute()
    assert abs(metrics["prune/ratio_achieved"] - 0.2) < 0.01
    reloaded = Run(validate(_compose(_overrides(tmp_path / "w" / "model", text_file, tmp_path))),
                   tmp_path / "w2", cache).execute()
    assert reloaded["params/total"] == metrics["params/total"]
    assert reloaded[f"ppl/{text_file}"] == metrics[f"ppl/{text_file}"]


def test_lora_and_cpt_share_one_pruned_model_and_log_their_curves(tiny_dir, text_file, tmp_path):
    cache = StageCache(tmp_path / "cache")
    prune = ["prune=depth", "prune.criterion=magnitude", "prune.protect_first=1",
             "prune.protect_last=1", "prune.ratio=null", "prune.num_blocks=1"]
    ppl = {}
    for method in ("none", "lora", "cpt"):
        spec = validate(_compose(_prune_overrides(
            tiny_dir, text_file, tmp_path, *prune, f"recover={method}", "recover.tokens=2048",
            "recover.seq_len=32", "recover.batch_size=4", f"recover.data={text_file}",
            "recover.disable_tqdm=true")))
        metrics = Run(spec, tmp_path / method, cache).execute()
        ppl[method] = metrics[f"ppl/{text_file}"]
        if method != "none":
            assert metrics["recover/tokens_seen"] == 2048
            assert len((tmp_path / method / "train_log.csv").read_text().splitlines()) > 1
    stages = [s.split("/")[0] for s in cache.computed]
    assert stages.count("pruned") == 1 and stages.count("recovered") == 2
    assert not (tmp_path / "cache" / "work").exists() or not any((tmp_path / "cache" / "work").iterdir())
    assert ppl["cpt"] < ppl["none"] and ppl["lora"] < ppl["none"]


def test_cli_takes_the_block_count_the_user_gives(tiny_dir, text_file, tmp_path):
    """`prune=depth prune.num_blocks=N` replaces the group's default ratio (no ratio=null)."""
    cmd = [sys.executable, "-m", "harness", *_prune_overrides(tiny_dir, text_file, tmp_path),
           "prune=depth", "prune.criterion=magnitude", "prune.protect_first=1",
           "prune.protect_last=1", "prune.num_blocks=2", f"hydra.run.dir={tmp_path / 'run'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["prune/num_removed"] == 2

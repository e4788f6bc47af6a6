"""Sweeps: Hydra multiruns through the stage cache, resumed, extended, killed, and on submitit."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest


def _sweep_cmd(tiny_dir, text_file, tmp_path, *extra):
    return [
        sys.executable, "-m", "harness", "-m", f"model.path={tiny_dir}",
        f"eval.ppl_sources=[{text_file}]", "eval.seq_len=32", f"data.calib_source={text_file}",
        "data.calib_samples=4", "data.calib_seq_len=16", f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}", "prune=depth", "prune.criterion=taylor",
        "prune.protect_first=1", "prune.protect_last=1", "prune.ratio=null", "logger=none",
        *extra,
    ]


def _run(cmd, sweep_dir):
    res = subprocess.run([*cmd, f"hydra.sweep.dir={sweep_dir}"], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _computed(sweep_dir: Path) -> list[list[str]]:
    return [json.loads(p.read_text())["computed"]
            for p in sorted(sweep_dir.glob("*/stages.json"))]


def _entries(tmp_path, stage):
    return [p for p in (tmp_path / "cache" / stage).glob("*") if not p.name.startswith(".")]


def test_two_ratio_sweep_twice_scores_once_and_second_time_does_nothing(
        tiny_dir, text_file, tmp_path):
    cmd = _sweep_cmd(tiny_dir, text_file, tmp_path, "prune.num_blocks=1,2")
    first = _run(cmd, tmp_path / "sweep1")
    assert len(_entries(tmp_path, "importance")) == 1  # one scoring for both sizes
    assert len(_entries(tmp_path, "pruned")) == 2
    assert "prune.num_blocks" in first.stdout or "depth" in first.stdout  # table printed
    _run(cmd, tmp_path / "sweep2")
    assert _computed(tmp_path / "sweep2") == [[], []]  # no pruning, training or evaluation
    table = pd.read_csv(tmp_path / "results" / "results.csv")
    assert len(table) == 2 and table["run_key"].is_unique
    assert sorted(table["prune/num_removed"]) == [1, 2]


def test_killed_sweep_resumes_without_duplicate_rows(tiny_dir, text_file, tmp_path):
    cmd = _sweep_cmd(tiny_dir, text_file, tmp_path, "prune.num_blocks=0,1,2")
    results = tmp_path / "results" / "results.csv"
    proc = subprocess.Popen([*cmd, f"hydra.sweep.dir={tmp_path / 'killed'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (results.exists() and len(pd.read_csv(results)) >= 1):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-sweep: later jobs have not run (or are half done)
    proc.wait()
    rows_before = len(pd.read_csv(results))
    assert 1 <= rows_before < 3
    _run(cmd, tmp_path / "resumed")
    done = _computed(tmp_path / "resumed")
    assert done[0] == []  # the job that finished before the kill is not redone
    table = pd.read_csv(results)
    assert len(table) == 3 and table["run_key"].is_unique


def test_extending_a_sweep_reuses_importance(tiny_dir, text_file, tmp_path):
    _run(_sweep_cmd(tiny_dir, text_file, tmp_path, "prune.num_blocks=1"), tmp_path / "a")
    _run(_sweep_cmd(tiny_dir, text_file, tmp_path, "prune.num_blocks=1,2"), tmp_path / "b")
    done = _computed(tmp_path / "b")
    assert done[0] == [] and not any(s.startswith("importance/") for s in done[1])
    assert any(s.startswith("pruned/") for s in done[1])


@pytest.mark.integration
def test_submitit_local_launcher_runs_two_jobs_into_one_table(tiny_dir, text_file, tmp_path):
    cmd = _sweep_cmd(tiny_dir, text_file, tmp_path, "prune.num_blocks=1,2",
                     "hydra/launcher=local", "hydra.launcher.timeout_min=10")
    _run(cmd, tmp_path / "submitit")
    table = pd.read_csv(tmp_path / "results" / "results.csv")
    assert len(table) == 2 and table["run_key"].is_unique
    assert len(_entries(tmp_path, "importance")) == 1
    assert list((tmp_path / "submitit" / ".submitit").glob("*/*_result.pkl"))


def test_cache_removes_a_killed_runs_temporary_entry_but_not_a_live_ones(tmp_path):
    from harness.cache.store import _HOST, StageCache

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stage = tmp_path / "pruned"
    orphan = stage / f".0123456789abcdef-{_HOST}-{dead.pid}-x1"
    live = stage / f".fedcba9876543210-{_HOST}-{os.getpid()}-x2"
    elsewhere = stage / f".0123456789abcdef-otherhost-{dead.pid}-x3"  # not ours to judge
    for d in (orphan, live, elsewhere):
        (d / "model").mkdir(parents=True)
    cache = StageCache(tmp_path)
    path, _ = cache.get_or_compute("pruned", {"a": 1}, lambda tmp: (tmp / "f").write_text("x") and {})
    assert (path / "f").read_text() == "x"
    assert not orphan.exists() and live.exists() and elsewhere.exists()
    assert sorted(p.name for p in stage.iterdir() if not p.name.startswith(".")) == [path.name]


def test_two_identical_sweeps_at_once_share_the_work_and_both_succeed(tiny_dir, text_file,
                                                                      tmp_path):
    """Launched together on one cache, identical CPT/LoRA sweeps compute each stage once (one
    process waits on the key's lock, then reads the entry): both exit 0, one row per config,
    and each published train_log.csv is one clean curve with the row's first loss.
    HARNESS_REPEAT=5 runs the pair five times in a row."""
    cmd = _sweep_cmd(tiny_dir, text_file, tmp_path, "prune.num_blocks=1", "recover=cpt,lora",
                     "recover.tokens=2048", "recover.seq_len=32", "recover.batch_size=4",
                     f"recover.data={text_file}", "recover.disable_tqdm=true")
    for round_ in range(int(os.environ.get("HARNESS_REPEAT", "1"))):
        procs = [subprocess.Popen([*cmd, f"hydra.sweep.dir={tmp_path / f's{round_}-{i}'}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
        table = pd.read_csv(tmp_path / "results" / "results.csv")
        assert len(table) == 2 and table["run_key"].is_unique
        for entry in _entries(tmp_path, "recovered"):
            log = pd.read_csv(entry / "train_log.csv")
            assert log["step"].tolist() == list(range(1, 17))  # 2048 / (32 x 4), never interleaved
            meta = json.loads((entry / "entry.json").read_text())["meta"]["metrics"]
            assert meta["recover/first_loss"] == log["loss"].iloc[0]
        assert len(_entries(tmp_path, "recovered")) == 2
        assert not list((tmp_path / "cache" / "work").glob("*"))  # no half-trained leftovers
        from harness.cache.tools import verify

        assert verify(tmp_path / "cache") == 0
        if round_ + 1 < int(os.environ.get("HARNESS_REPEAT", "1")):
            import shutil

            shutil.rmtree(tmp_path / "cache")
            (tmp_path / "results" / "results.csv").unlink()

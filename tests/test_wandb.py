"""W&B through its own integrations, read back from the offline run a real harness sweep wrote."""

import os
import subprocess
import sys

import pytest
from wandb_offline import read_run


@pytest.fixture
def offline_sweep(tiny_dir, text_file, tmp_path):
    """One-job sweep: depth-prune the tiny model, LoRA 16 steps, W&B offline in tmp_path."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path),
           "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
           "WANDB_DATA_DIR": str(tmp_path / "wandb_data")}
    cmd = [sys.executable, "-m", "harness", "-m", f"model.path={tiny_dir}",
           f"data.calib_source={text_file}", "data.calib_seq_len=16", "data.calib_samples=2",
           f"eval.ppl_sources=[{text_file}]", "eval.seq_len=32",
           "prune=depth", "prune.criterion=magnitude", "prune.protect_first=1",
           "prune.protect_last=1", "prune.num_blocks=1",
           "recover=lora", "recover.tokens=2048", "recover.seq_len=32", "recover.batch_size=4",
           f"recover.data={text_file}", "recover.disable_tqdm=true",
           f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}",
           f"hydra.sweep.dir={tmp_path / 'sweep-42'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp_path / "sweep-42", res


def test_offline_runs_have_live_loss_group_tags_artifacts_and_sweep_table(offline_sweep):
    sweep, res = offline_sweep
    run = read_run(sweep / "0")
    assert run["run"].run_group == "default-sweep-42"  # experiment + sweep id
    assert run["run"].job_type == "recover"
    assert list(run["run"].tags) == ["depth", "criterion:magnitude", "recover:lora"]
    steps = [h for h in run["history"] if "train/loss" in h]
    # the Trainer's WandbCallback, one entry per logged step (16 steps of 4 x 32 tokens)
    assert [h["train/global_step"] for h in steps] == list(range(1, 17))
    assert len({h["train/loss"] for h in steps}) > 1
    assert all("train/grad_norm" in h for h in steps)
    names = {name.split("-")[0]: (name, kind) for name, kind in run["artifacts"]}
    assert set(names) == {"results", "prune_plan", "config", "model"}
    assert names["model"][1] == "model" and names["prune_plan"][1] == "prune_plan"

    summary = read_run(sweep)  # the sweep's summary run lives in the sweep dir itself
    assert summary["run"].run_group == "default-sweep-42" and summary["run"].job_type == "summary"
    tables = {k.removesuffix("/_type") for h in summary["history"] for k, v in h.items()
              if k.endswith("/_type") and v == "table-file"}
    assert tables == {"sweep", "results"}
    assert {kind for _, kind in summary["artifacts"]} == {"run_table"}
    assert "wandb:" not in res.stderr + res.stdout  # no banner, no sparklines, no summary
    table = res.stdout.split("== default, this sweep (1 run) ==\n")[1].splitlines()
    assert table[0].split()[:6] == ["prune.name", "prune.criterion", "prune.unit",
                                    "prune.num_blocks", "recover.name", "recover.tokens"]
    assert table[1].split()[:6] == ["depth", "magnitude", "block", "1", "lora", "2048"]


def test_a_cached_rerun_opens_no_second_run_and_replays_under_live_names(offline_sweep, tmp_path):
    """The W&B run's id is the run key; the same config again computes nothing and opens no
    W&B run; a new row built on the cached recovery replays its curve under the names the
    Trainer used live."""
    from harness.tracking.wandb_logger import REPLAY_NAMES

    sweep, res = offline_sweep
    live = read_run(sweep / "0")
    key = __import__("pandas").read_csv(tmp_path / "results" / "results.csv")["run_key"][0]
    assert live["run"].run_id == key
    cmd = [a for a in res.args if not a.startswith("hydra.sweep.dir=")]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    again = subprocess.run([*cmd, f"hydra.sweep.dir={tmp_path / 'again'}"], capture_output=True,
                           text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not list((tmp_path / "again" / "0").glob("wandb/*-run-*"))  # skipped: nothing new
    other = [a if not a.startswith("eval.seq_len=") else "eval.seq_len=16" for a in cmd]
    replay = subprocess.run([*other, f"hydra.sweep.dir={tmp_path / 'replay'}"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert replay.returncode == 0, replay.stderr[-2000:]
    replayed = read_run(tmp_path / "replay" / "0")
    assert replayed["run"].run_id != key  # another row, another W&B run
    names = lambda run: {k for h in run["history"] for k in h if k.startswith("train/")}  # noqa: E731
    assert {REPLAY_NAMES[c] for c in ("step", "loss", "lr", "tokens_seen")} <= names(live)
    assert names(replayed) - {"train/phase"} <= names(live)
    assert [h["train/global_step"] for h in replayed["history"] if "train/loss" in h] == \
        list(range(1, 17))

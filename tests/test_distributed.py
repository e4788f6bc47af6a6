"""Several processes on one run (2 ranks, gloo on the CPU, tiny model): the loss curves of one
process at the same global batch, and everything that must happen once happens once.

Each launch starts processes that import torch, so there are few: one reference sweep (one
process), one `accelerate launch --cpu --num_processes 2` sweep (DDP, all four methods), a
sweep killed mid-training on one rank, then relaunched as a SLURM job would run (two submitit
tasks, local executor), and FSDP2's sharding (torch's own
`fully_shard`, which runs on gloo) gathered back into a plain model. The Trainer's FSDP itself
is GPU-only (accelerate enables it for multi-GPU runs only): its configuration is tested here,
its training in benchmarks/gpu_suite.sh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from harness.models.loader import load_model, save_model
from harness.models.tiny import tiny_model, tiny_tokenizer

METHODS = ("cpt", "lora", "kd", "cpt_lora")
TESTS = Path(__file__).parent
TOL = 1e-4


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    save_model(tiny_model("llama"), tiny_tokenizer(), root / "tiny")
    docs = [f"Document {i}: the quick brown fox jumps over the lazy dog {i} times." * 3
            for i in range(12)]
    (root / "corpus.txt").write_text("\n\n".join(docs))
    return root


def overrides(assets: Path, out: Path, batch: int, methods=METHODS) -> list[str]:
    """A sweep over recovery methods after depth pruning; 4 optimizer steps of 8 x 32 tokens."""
    text = assets / "corpus.txt"
    return [
        "-m", f"model.path={assets / 'tiny'}", f"eval.ppl_sources=[{text}]", "eval.seq_len=32",
        f"data.calib_source={text}", "data.calib_samples=4", "data.calib_seq_len=16",
        f"results_dir={out / 'results'}", f"cache_dir={out / 'cache'}", "prune=depth",
        "prune.criterion=magnitude", "prune.protect_first=1", "prune.protect_last=1",
        "prune.ratio=null", "prune.num_blocks=1", f"recover={','.join(methods)}",
        "recover.tokens=1024", "recover.seq_len=32", f"recover.batch_size={batch}",
        f"recover.data={text}", "recover.save_steps=2", "recover.warmup_ratio=0",
        "recover.lr=3e-3", "recover.lora_lr=1e-2", "recover.lora_dropout=0.0",  # dropout masks
        "recover.disable_tqdm=true",  # are drawn per rank: no equal curve with dropout on
    ]


def launch(cmd: list[str], cwd: Path, check: bool = True, **env) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    if check:
        assert res.returncode == 0, res.stderr[-4000:]
    return res


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            *args]


def jobs(sweep_dir: Path) -> dict[str, Path]:
    """recover.name -> job dir of a sweep."""
    out = {}
    for config in sweep_dir.glob("*/config.yaml"):
        out[OmegaConf.load(config).recover.name] = config.parent
    return out


def curve(job: Path) -> pd.DataFrame:
    return pd.read_csv(job / "train_log.csv")


def assert_same_curve(got: Path, want: Path) -> None:
    a, b = curve(got), curve(want)
    assert list(a["step"]) == list(b["step"]) == [1, 2, 3, 4]
    assert list(a["tokens_seen"]) == list(b["tokens_seen"])
    assert (a["loss"] - b["loss"]).abs().max() <= TOL, (a, b)


@pytest.fixture(scope="module")
def reference(assets):
    """One process, batch 8: the curves every multi-process run must reproduce."""
    out = assets / "one"
    launch([sys.executable, "-m", "harness", *overrides(assets, out, 8), "logger=none",
            f"hydra.sweep.dir={out / 'sweep'}"], cwd=assets)
    return out


def test_two_processes_give_one_process_curves_and_write_everything_once(assets, reference):
    out = assets / "two"
    out.mkdir()
    # accelerate's --cpu launcher starts one process; the harness starts two through torchrun
    accelerate = str(Path(sys.executable).parent / "accelerate")
    res = launch([accelerate, "launch", "--cpu", "--num_processes", "2", "-m", "harness",
                  *overrides(assets, out, 4)],
                 cwd=out, WANDB_MODE="offline")
    assert "starting 2 through torchrun" in res.stderr
    sweeps = list((out / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 1  # both ranks named the same sweep dir (rank 0's launch time)
    two, one = jobs(sweeps[0]), jobs(reference / "sweep")
    others = {p.name for p in sweeps[0].iterdir()} - {job.name for job in two.values()}
    assert sorted(two) == sorted(METHODS) and others == {"multirun.yaml", "wandb"}
    assert len(list((sweeps[0] / "wandb").glob("offline-run-*"))) == 1  # the sweep's summary run, once
    for method, job in two.items():
        assert_same_curve(job, one[method])
        assert (job / "harness_rank1.log").exists()  # rank 1 ran, logging beside rank 0
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1
        load_model(str(job / "model"))  # the published entry loads
    table = pd.read_csv(out / "results" / "results.csv")
    assert len(table) == len(METHODS) and table["run_key"].is_unique
    assert set(table["recover/world_size"]) == {2} and set(table["recover/global_batch"]) == {8}
    assert set(table["recover/cpt/parallel"].dropna()) == {"MULTI_CPU"}
    ref_keys = set(pd.read_csv(reference / "results" / "results.csv")["run_key"])
    assert not ref_keys & set(table["run_key"])  # world size is part of the key
    cache = out / "cache"
    assert len(list((cache / "pruned").glob("[!.]*"))) == 1  # pruned once, by rank 0
    assert len(list((cache / "recovered").glob("[!.]*"))) == len(METHODS)
    assert not list((cache / "recovered").glob(".*"))  # no temporary entry left behind


def test_run_killed_on_one_rank_resumes_from_its_last_complete_checkpoint(assets, reference):
    out = assets / "killed"
    args = [*overrides(assets, out, 4, methods=("kd", "cpt_lora")), "logger=none",
            "recover.gradient_checkpointing=true", f"hydra.sweep.dir={out / 'sweep'}"]
    killed = launch(torchrun(str(TESTS / "_kill_one_rank.py"), *args), cwd=assets, check=False,
                    KILL_RANK="1", KILL_STEP="3")
    assert killed.returncode != 0
    work = [p for p in (out / "cache" / "work").iterdir()]
    assert len(work) == 1 and (work[0] / "kd" / "checkpoint-2" / "COMPLETE").exists()
    # relaunched as a SLURM job would run: submitit tasks (local executor), one per rank
    launch([sys.executable, "-m", "harness", *args, "hydra/launcher=local",
            "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=10"], cwd=assets)
    assert len(list((out / "sweep" / ".submitit").glob("*/*_1_log.err"))) == 2  # task 1 ran
    two, one = jobs(out / "sweep"), jobs(reference / "sweep")
    for method in ("kd", "cpt_lora"):
        assert_same_curve(two[method], one[method])
        load_model(str(two[method] / "model"))
    table = pd.read_csv(out / "results" / "results.csv").set_index("recover.name")
    assert table.loc["kd", "recover/kd/resumed_from_step"] == 2
    assert table.loc["cpt_lora", "recover/cpt/resumed_from_step"] == 0
    assert set(table["recover/world_size"]) == {2}  # same key as the killed torchrun run
    assert not any((out / "cache" / "work").iterdir())  # training state gone once published


def test_slurm_jobs_run_one_task_per_gpu_and_requeue():
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    from harness.cli import CONF_DIR
    from harness.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm",
                                           "hydra.launcher.gpus_per_node=8"],
                      return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["tasks_per_node"] == 8 and launcher["max_num_timeout"] > 0
    assert callable(get_class(launcher["_target_"]).checkpoint)  # resubmits the same job


def test_fsdp2_sharded_model_gathers_back_into_the_plain_model(tmp_path):
    """Full model and LoRA: shard with fully_shard, one step, gather_plain == one process."""
    launch(torchrun(str(TESTS / "_fsdp_gather.py"), str(tmp_path)), cwd=tmp_path)
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for kind in ("full", "lora"):
            r = report[kind]
            assert r["sharded"] and r["plain"] and r["tied"] and r["moved"] > 1e-3, r
            assert r["weights_diff"] <= 1e-6 and r["logits_diff"] <= 1e-5, r


# ---- in-process: configuration, keys, devices, guards --------------------------------------


def test_fsdp_keys_map_onto_the_trainers_own_fsdp_options(tmp_path):
    from accelerate.utils import FullyShardedDataParallelPlugin

    from harness.recovery.registry import settings
    from harness.recovery.trainer import training_args

    cfg = settings(name="cpt", tokens=64, fsdp="full_shard", fsdp_offload=True,
                        gradient_checkpointing=True)
    args = training_args(cfg, tmp_path, lr=1e-4, max_steps=2)
    assert args.fsdp is True and args.activation_checkpointing is False  # FSDP's own AC instead
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.cpu_offload and plugin.activation_checkpointing
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    grad_op = training_args(settings(name="lora", tokens=64, fsdp="shard_grad_op"), tmp_path,
                            lr=1e-4, max_steps=2)
    assert grad_op.fsdp_plugin_args["reshard_after_forward"] is False
    assert not grad_op.fsdp_plugin_args.get("cpu_offload")
    plain = training_args(settings(name="cpt", tokens=64, gradient_checkpointing=True),
                          tmp_path, lr=1e-4, max_steps=2)
    assert not plain.fsdp and plain.activation_checkpointing is True


@pytest.mark.parametrize("fields, needle", [
    ({"fsdp": "zero3"}, "recover.fsdp must be one of"),
    ({"fsdp_offload": True}, "recover.fsdp_offload=true needs"),
    ({"fsdp": "full_shard"}, "needs GPUs and a distributed launch"),  # this CPU-only process
])
def test_bad_fsdp_settings_fail_in_one_line(fields, needle):
    from harness.recovery.registry import settings

    with pytest.raises(ValueError, match=needle) as err:
        settings(name="cpt", tokens=64, **fields).validate()
    assert "\n" not in str(err.value)


def test_world_size_enters_recovery_keys_only(monkeypatch, tmp_path, tiny_dir):
    from test_config import _compose

    from harness.config import validate
    from harness.identity import run_key, stage_keys

    lora = validate(_compose([f"model.path={tiny_dir}", "recover=lora", "recover.tokens=4096"]))
    dense = validate(_compose([f"model.path={tiny_dir}"]))
    one = (run_key(lora), run_key(dense), stage_keys(lora)["recovered"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    two = (run_key(lora), run_key(dense), stage_keys(lora)["recovered"])
    assert one[0] != two[0] and one[1] == two[1]  # evaluation alone: rank 0, same numbers
    assert two[2]["recover"]["world_size"] == 2 and "world_size" not in one[2]["recover"]
    assert "fsdp" not in lora.recover.key_fields()  # how it is spread, not what it computes


def test_rank_devices_follow_local_rank(monkeypatch):
    from harness import distributed
    from harness.models.loader import resolve_device

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.device() == resolve_device("auto") == torch.device("cuda", 3)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)  # a task shown only its own GPU
    assert distributed.device() == torch.device("cuda", 0)


def test_one_process_runs_stages_itself():
    from harness import distributed

    assert not distributed.active() and distributed.on_main(lambda: 7) == 7
    with pytest.raises(KeyError):
        distributed.on_main(lambda: {}["x"])


def test_an_incomplete_model_dir_is_never_published(tmp_path):
    from harness.models.loader import check_loadable

    good = save_model(tiny_model(), tiny_tokenizer(), tmp_path / "good")
    check_loadable(good)
    tokenizer_only = tmp_path / "tok"  # what rank 1 published before
    tiny_tokenizer().save_pretrained(tokenizer_only)
    with pytest.raises(ValueError, match="not a complete model"):
        check_loadable(tokenizer_only)
    (good / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a complete model"):
        check_loadable(good)
    wrong = tiny_model()
    wrong.config.intermediate_size = 96  # config says 96 channels, weights have 128
    with pytest.raises(ValueError, match="not a complete model"):
        save_model(wrong, None, tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Trainer's FSDP needs GPUs")
def test_fsdp_training_on_gpus_gives_the_one_process_curves(assets, tmp_path):
    """GPU only (benchmarks/gpu_suite.sh runs it): FSDP2 full shard with CPU offload and
    activation checkpointing through the Trainer, fp32, against one process without FSDP."""
    nproc = min(2, torch.cuda.device_count())
    methods, plain = ("kd", "cpt_lora"), ["logger=none", "recover.bf16=false"]
    one = [*overrides(assets, tmp_path / "one", 8, methods), *plain,
           f"hydra.sweep.dir={tmp_path / 'one_sweep'}"]
    launch([sys.executable, "-m", "harness", *one], cwd=tmp_path)
    sharded = [*overrides(assets, tmp_path, 8 // nproc, methods), *plain,
               "recover.fsdp=full_shard", "recover.fsdp_offload=true",
               "recover.gradient_checkpointing=true", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    launch([sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "harness", *sharded], cwd=tmp_path)
    got, want = jobs(tmp_path / "sweep"), jobs(tmp_path / "one_sweep")
    for method in ("kd", "cpt_lora"):
        a, b = curve(got[method]), curve(want[method])
        assert (a["loss"] - b["loss"]).abs().max() <= 1e-3, (a, b)
        load_model(str(got[method] / "model"))
    table = pd.read_csv(tmp_path / "results" / "results.csv").set_index("recover.name")
    assert table.loc["kd", "recover/kd/parallel"] == "FSDP"
    assert table.loc["cpt_lora", "recover/lora/parallel"] == "FSDP"

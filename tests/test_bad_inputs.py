"""The bad-input battery: each case exits with code 2 and exactly one stderr line, before any
model loads, and leaves nothing behind but Hydra's own files (no config.yaml, no cache entry, no
results row). Cases run the CLI entry point in-process (Hydra's global state cleared between
calls); a few run as real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra.core.global_hydra import GlobalHydra
from safetensors.torch import load_file, save_file

from harness import cli
from harness.models import hub

HYDRA_OWN = {".hydra", "cli.log"}  # what Hydra writes into a run dir before our code runs
# (and into a sweep dir: multirun.yaml)
DEPTH = ["prune=depth", "prune.protect_first=1", "prune.protect_last=1"]  # the tiny has 4 layers


def _copy(src: Path, dst: Path, change=None) -> Path:
    shutil.copytree(src, dst)
    if change:
        change(dst)
    return dst


def _edit_config(**kw):
    def change(d: Path):
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(kw)
        (d / "config.json").write_text(json.dumps(cfg))
    return change


def _drop_tensor(d: Path):
    sd = load_file(str(d / "model.safetensors"))
    sd.pop("model.layers.1.mlp.up_proj.weight")
    save_file(sd, str(d / "model.safetensors"))


def _to_bin(drop: str | None = None, pickle_object: bool = False):
    """The checkpoint as pytorch_model.bin (one tensor dropped, or an object only a full
    unpickler can load) instead of safetensors."""
    def change(d: Path):
        import argparse

        import torch

        sd = load_file(str(d / "model.safetensors"))
        if drop:
            sd.pop(drop)
        if pickle_object:  # a class torch.load(weights_only=True) does not allow
            sd = {**sd, "extra": argparse.Namespace(a=1)}
        torch.save(sd, d / "pytorch_model.bin")
        (d / "model.safetensors").unlink()
    return change


def _remote_code(d: Path):
    """A config whose family the harness does not support, with code that must never run."""
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="evilnet", auto_map={"AutoConfig": "evil.EvilConfig"})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "evil.py").write_text(f"open({str(d / 'RAN')!r}, 'w').write('x')\n"
                               "from transformers import PretrainedConfig\n"
                               "class EvilConfig(PretrainedConfig):\n    model_type = 'evilnet'\n")


def _index_to_missing_shard(d: Path):
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}))


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """Every damaged input, built once: model dirs, texts, results tables."""
    from harness.models.loader import save_model
    from harness.models.tiny import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("bad")
    tiny = save_model(tiny_model("llama"), tiny_tokenizer(), root / "tiny")
    st = tiny / "model.safetensors"
    models = {
        "no_config": lambda d: (d / "config.json").unlink(),
        "bad_json": lambda d: (d / "config.json").write_text('{"model_type": "llama",'),
        "gpt2": _edit_config(model_type="gpt2"),
        "no_weights": lambda d: (d / "model.safetensors").unlink(),
        "truncated": lambda d: (d / "model.safetensors").write_bytes(st.read_bytes()[:-100]),
        "garbage": lambda d: (d / "model.safetensors").write_bytes(os.urandom(4096)),
        "empty_weights": lambda d: (d / "model.safetensors").write_bytes(b""),
        "wider": _edit_config(intermediate_size=160),
        "deeper": _edit_config(num_hidden_layers=6),
        "dropped": _drop_tensor,
        "missing_shard": _index_to_missing_shard,
        "no_tokenizer": lambda d: [(d / f).unlink() for f in ("tokenizer.json",
                                                             "tokenizer_config.json")],
        "bin_missing": _to_bin(drop="model.layers.1.mlp.up_proj.weight"),
        "bin_pickle": _to_bin(pickle_object=True),
        "remote_code": _remote_code,
    }
    paths = {"tiny": tiny, **{k: _copy(tiny, root / k, fn) for k, fn in models.items()}}
    paths["small_vocab"] = save_model(tiny_model("llama", vocab=200), tiny_tokenizer(),
                                      root / "small_vocab")
    docs = [f"Document {i}: the quick brown fox jumps over the lazy dog {i} times." * 3
            for i in range(12)]
    texts = {"one_window.txt": "x" * 40, "records.json": json.dumps([{"text": docs[0]}]),
        "corpus.txt": "\n\n".join(docs), "empty.txt": "", "blank.txt": " \n\n \t\n",
        "short.txt": "hello there", "medium.txt": "The quick brown fox. " * 5, "bad.jsonl": '{"text": "fine"}\n{oops\n',
        "notext.jsonl": '{"body": "no text field"}\n', "alpaca.json": '{"not": "a list"}',
    }
    for name, text in texts.items():
        (root / name).write_text(text)
        paths[name] = root / name
    paths["binary.txt"] = root / "binary.txt"
    paths["binary.txt"].write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    (root / "dir.txt").mkdir()
    paths["dir.txt"] = root / "dir.txt"
    paths["a_file"] = root / "a_file"
    paths["a_file"].write_text("not a directory")
    for name, content in (("garbage_results", b"\x00\x01\xff" * 50),
                          ("foreign_results", b"name,score\nx,1\n")):
        (root / name).mkdir()
        (root / name / "results.csv").write_bytes(content)
        paths[name] = root / name
    (root / "lock_dir" / "results.csv.lock").mkdir(parents=True)
    paths["lock_dir"] = root / "lock_dir"
    for name, file in (("stage_file", "pruned"), ("corrupt_file", ".corrupt"),
                       ("work_file", "work")):
        (root / name).mkdir()
        (root / name / file).write_text("not a directory")
        paths[name] = root / name
    return paths


# (id, overrides built from the fixture, a phrase the one line must contain)
CASES = [
    # Hydra composition: unknown options, misspelt keys, wrong types, syntax
    ("group_option", lambda w: ["prune=foo"], "prune=foo is not an option of prune"),
    ("group_option_close", lambda w: ["recover=lorra"], "did you mean lora"),
    ("model_option", lambda w: ["model=gpt9"], "model=gpt9 is not an option of model"),
    ("eval_option", lambda w: ["eval=bogus"], "eval=bogus is not an option of eval"),
    ("logger_option", lambda w: ["logger=wandbb"], "did you mean wandb"),
    ("launcher_option", lambda w: ["hydra/launcher=slurmm"], "did you mean slurm"),
    ("experiment_option", lambda w: ["experiment=quik"], "did you mean quick"),
    ("key_typo", lambda w: ["eval.seq_lenn=64"], "did you mean eval.seq_len"),
    ("nested_key_typo", lambda w: ["eval.zeroshot.limt=5"], "did you mean eval.zeroshot.limit"),
    ("group_typo", lambda w: ["prunee=depth"], "did you mean prune"),
    ("key_of_other_group", lambda w: ["prune.ratio=0.2"], "unknown key prune.ratio"),
    ("new_key", lambda w: ["+seeed=1"], "did you mean seed"),
    ("wrong_type_int", lambda w: ["eval.seq_len=abc"], "eval.seq_len"),
    ("wrong_type_float", lambda w: ["prune=depth", "prune.ratio=abc"], "prune.ratio"),
    ("float_for_int", lambda w: ["recover.tokens=1.5"], "recover.tokens"),
    ("syntax", lambda w: ["eval.ppl_sources=["], "cannot parse the override"),
    ("sweep_without_m", lambda w: ["recover.lr=1e-4,1e-3"], "--multirun"),
    ("sweep_bad_value", lambda w: ["-m", "eval.seq_len=32,abc"], "eval.seq_len"),
    # the model: names, paths, hub ids, config.json, weights, tokenizer
    ("model_name", lambda w: ["model.path=null", "model.name=gpt9"], "unknown model 'gpt9'"),
    ("no_such_path", lambda w: ["model.path=/no/such/model"], "does not exist"),
    ("hub_offline", lambda w: ["model.path=acme-labs/tiny-llama"], "hub is unreachable"),
    ("no_config", lambda w: [f"model.path={w['no_config']}"], "has no config.json"),
    ("bad_config_json", lambda w: [f"model.path={w['bad_json']}"], "config.json is not valid JSON"),
    ("unsupported", lambda w: [f"model.path={w['gpt2']}"], "unsupported architecture 'gpt2'"),
    ("no_weights", lambda w: [f"model.path={w['no_weights']}"], "has no weights"),
    ("truncated_weights", lambda w: [f"model.path={w['truncated']}"], "truncated or damaged"),
    ("garbage_weights", lambda w: [f"model.path={w['garbage']}"], "truncated or damaged"),
    ("empty_weights", lambda w: [f"model.path={w['empty_weights']}"], "truncated or damaged"),
    ("shape_mismatch", lambda w: [f"model.path={w['wider']}"], "gate_proj.weight is [128, 64] in the weights but [160, 64]"),
    ("more_layers", lambda w: [f"model.path={w['deeper']}"], "the weights lack model.layers.4"),
    ("missing_tensor", lambda w: [f"model.path={w['dropped']}"], "lack model.layers.1.mlp.up"),
    ("missing_shard", lambda w: [f"model.path={w['missing_shard']}"], "is missing"),
    ("no_tokenizer", lambda w: [f"model.path={w['no_tokenizer']}"], "no usable tokenizer"),
    ("dtype", lambda w: ["model.dtype=int3"], "model.dtype must be"),
    # evaluation, calibration and training texts
    ("unknown_source", lambda w: ["eval.ppl_sources=[nope]"], "unknown text source 'nope'"),
    ("hub_dataset_offline", lambda w: ["eval.ppl_sources=[hf:wikitext:wikitext-2-raw-v1:test]"],
     "cannot be loaded (Couldn't reach 'wikitext' on the Hub"),
    ("hub_dataset_form", lambda w: ["eval.ppl_sources=[hf:wikitext]"], "hf:PATH[:CONFIG]:SPLIT"),
    ("empty_text", lambda w: [f"eval.ppl_sources=[{w['empty.txt']}]"], "holds no text"),
    ("blank_text", lambda w: [f"eval.ppl_sources=[{w['blank.txt']}]"], "holds no text"),
    ("binary_text", lambda w: [f"eval.ppl_sources=[{w['binary.txt']}]"], "is not UTF-8"),
    ("short_text", lambda w: [f"eval.ppl_sources=[{w['short.txt']}]"], "too short"),
    ("bad_jsonl", lambda w: [f"eval.ppl_sources=[{w['bad.jsonl']}]"], "line 2 is not a JSON"),
    ("jsonl_no_text", lambda w: [f"eval.ppl_sources=[{w['notext.jsonl']}]"], "line 1"),
    ("text_is_dir", lambda w: [f"eval.ppl_sources=[{w['dir.txt']}]"], "is not a file"),
    ("seq_len_too_long", lambda w: ["eval.seq_len=1000"], "max_position_embeddings=512"),
    ("seq_len_longer_than_text", lambda w: [f"eval.ppl_sources=[{w['medium.txt']}]",
                                            "eval.seq_len=200"], "it has 104 tokens"),
    ("seq_len_1", lambda w: ["eval.seq_len=1"], "seq_len must be >= 2"),
    ("calib_test_split", lambda w: [*DEPTH, "data.calib_source=wiki_test"], "test split"),
    ("calib_short", lambda w: [*DEPTH, f"data.calib_source={w['short.txt']}"], "longest"),
    ("calib_seq_len", lambda w: [*DEPTH, "data.calib_seq_len=600"], "data.calib_seq_len"),
    ("train_missing", lambda w: ["recover=lora", "recover.tokens=4096", "recover.data=/no.txt"],
     "recover.data: /no.txt does not exist"),
    ("train_empty", lambda w: ["recover=lora", "recover.tokens=4096",
                               f"recover.data={w['empty.txt']}"], "holds no text"),
    ("train_alpaca", lambda w: ["recover=lora", "recover.tokens=4096",
                                f"recover.data={w['alpaca.json']}"], "JSON list of records"),
    # budgets and settings
    ("tokens_below_step", lambda w: ["recover=lora", "recover.tokens=1"], ">= 1024"),
    ("cpt_lora_one_step", lambda w: ["recover=cpt_lora", "recover.tokens=1024"], ">= 2048"),
    ("tokens_zero", lambda w: ["recover=cpt", "recover.tokens=0"], "tokens must be > 0"),
    ("train_seq_len", lambda w: ["recover=kd", "recover.tokens=8192", "recover.seq_len=1024"],
     "recover.seq_len=1024 exceeds"),
    ("ratio_out_of_reach", lambda w: ["prune=depth", "prune.ratio=0.99"], "prune.ratio"),
    ("criterion_of_other_method", lambda w: ["prune=depth", "prune.criterion=flap"], "criterion"),
    ("shape_only_recovery", lambda w: ["model.path=null", "model=llama_1b_shape", "recover=cpt",
                                       "recover.tokens=4096"], "random weights"),
    ("logger_mode", lambda w: ["logger.mode=loud"], "logger.mode must be"),
    # results and cache directories, disk
    ("results_is_file", lambda w: [f"results_dir={w['a_file']}"], "is a file"),
    ("results_under_file", lambda w: [f"results_dir={w['a_file']}/sub"], "cannot be created"),
    ("results_garbage", lambda w: [f"results_dir={w['garbage_results']}"], "not a results table"),
    ("results_foreign", lambda w: [f"results_dir={w['foreign_results']}"], "no run_key column"),
    ("cache_is_file", lambda w: [f"cache_dir={w['a_file']}"], "cache_dir="),
    # issue 23: wrong results with exit 0, and tracebacks, now one line before any work
    ("bin_missing_tensor", lambda w: [f"model.path={w['bin_missing']}"],
     "the weights lack model.layers.1.mlp.up_proj.weight"),
    ("bin_pickle", lambda w: [f"model.path={w['bin_pickle']}"], "not a plain tensor checkpoint"),
    ("remote_code_family_first", lambda w: [f"model.path={w['remote_code']}",
                                            "model.trust_remote_code=true"],
     "unsupported architecture 'evilnet'"),
    ("vocab_smaller_than_tokenizer", lambda w: [f"model.path={w['small_vocab']}"],
     "the tokenizer gives ids up to 255 but the model's vocab_size is 200"),
    ("lora_targets", lambda w: ["recover=lora", "recover.tokens=4096",
                                "recover.lora_targets=[foo_proj]"], "are not projections"),
    ("device_name", lambda w: ["model.device=banana"], "model.device=banana is not a device"),
    ("device_cuda_without_gpu", lambda w: ["model.device=cuda"], "no GPU is visible"),
    ("attention_unknown", lambda w: ["model.attn_implementation=foo"],
     "model.attn_implementation=foo is unknown"),
    ("attention_flash", lambda w: ["model.attn_implementation=flash_attention_2"],
     "needs the flash-attn package"),
    ("results_under_proc", lambda w: ["results_dir=/proc/harness_results"], "cannot be written"),
    ("results_empty", lambda w: ["results_dir="], "results_dir is empty"),
    ("results_lock_is_dir", lambda w: [f"results_dir={w['lock_dir']}"],
     "results.csv.lock is not a file"),
    ("cache_stage_is_file", lambda w: [f"cache_dir={w['stage_file']}"],
     "pruned is a file where the cache keeps a directory"),
    ("cache_corrupt_is_file", lambda w: [f"cache_dir={w['corrupt_file']}"],
     ".corrupt is a file where the cache keeps a directory"),
    ("cache_work_is_file", lambda w: [f"cache_dir={w['work_file']}", "recover=lora",
                                      "recover.tokens=4096"], "work is a file"),
    ("prune_name_contradicts_group", lambda w: ["prune=width", "prune.name=depth"],
     "prune.name=depth contradicts"),
    ("shape_only_calibration", lambda w: ["model.path=null", "model=llama_1b_shape",
                                          "prune=depth", "eval=speed"],
     "prune.criterion=ppl needs calibration text"),
    ("shape_only_nothing_to_measure", lambda w: ["model.path=null", "model=llama_1b_shape"],
     "nothing to measure"),
    ("ratio_rounds_to_nothing", lambda w: [*DEPTH, "prune.ratio=0.001"], "rounds to 0 blocks"),
    ("width_ratio_rounds_to_nothing", lambda w: ["prune=width", "prune.layer_start=1",
                                                 "prune.layer_end=-1", "prune.ratio=0.0005"],
     "rounds to nothing removed"),
    ("blocks_empty", lambda w: [*DEPTH, "prune.blocks=[]"], "prune.blocks=[] removes nothing"),
    # issue 26: hybrid pruning
    ("hybrid_share", lambda w: ["prune=hybrid", "prune.depth_share=1.5"],
     "prune.depth_share=1.5 must be in [0, 1]"),
    ("hybrid_depth_criterion", lambda w: ["prune=hybrid", "prune.depth_criterion=flap"],
     "prune.depth_criterion"),
    ("hybrid_sublayers_and_width", lambda w: ["prune=hybrid", "prune.depth_unit=attn"],
     "prune.depth_unit=attn with width pruning is not supported"),
    ("hybrid_depth_out_of_reach", lambda w: [*DEPTH[1:], "prune=hybrid", "prune.depth_share=1",
                                             "prune.ratio=0.9"], "depth part"),
    ("hybrid_criterion_key", lambda w: ["prune=hybrid", "prune.criterion=ppl"],
     "prune.criterion"),
    ("no_metric", lambda w: ["eval.ppl_sources=[]"], "nothing to measure"),
    ("eval_one_window", lambda w: [f"eval.ppl_sources=[{w['one_window.txt']}]"],
     "2 windows of eval.seq_len=32 need 64"),
    ("eval_json", lambda w: [f"eval.ppl_sources=[{w['records.json']}]"], "is a .json file"),
    ("calib_json", lambda w: [*DEPTH, f"data.calib_source={w['records.json']}"],
     "is a .json file"),
    ("train_on_test_split", lambda w: ["recover=lora", "recover.tokens=4096",
                                       "recover.data=wiki_test"], "is a test split"),
    # a budget above the corpus: refused with both numbers unless recover.epochs_ok=true
    ("tokens_above_corpus", lambda w: ["recover=cpt", f"recover.data={w['corpus.txt']}",
                                       "recover.tokens=8192", "recover.seq_len=32"],
     "recover.tokens=8192 is above the corpus"),
    ("tokens_above_wiki_train", lambda w: ["recover=lora", "recover.tokens=100000000"],
     "recover.data=wiki_train holds"),
    ("train_dir_no_shards", lambda w: ["recover=lora", "recover.tokens=4096",
                                       f"recover.data={w['dir.txt']}"], "holds no .txt/.jsonl"),
    ("eval_on_test_split", lambda w: ["recover=lora", "recover.tokens=4096",
                                      "recover.eval_every=1024", "recover.eval_data=c4_test"],
     "recover.eval_data=c4_test is a test split"),
    ("train_hub_offline", lambda w: ["recover=cpt", "recover.tokens=4096",
                                     "recover.data=hf:no-such-org/no-such-corpus"],
     "recover.data: hf:no-such-org/no-such-corpus:train cannot be loaded"),
    ("eval_on_training_data", lambda w: ["recover=lora", "recover.tokens=4096",
                                         "recover.eval_every=1024",
                                         "recover.eval_data=wiki_train"], "is the training corpus"),
    ("bad_schedule", lambda w: ["recover=cpt", "recover.tokens=4096",
                                "recover.schedule=linear"], "recover.schedule must be one of"),
    ("run_dir_unwritable", lambda w: ["hydra.run.dir=/proc/harness_run"],
     "cannot create /proc/harness_run"),
    ("sweep_dir_unwritable", lambda w: ["-m", "hydra.sweep.dir=/proc/harness_sweep"],
     "cannot create /proc/harness_sweep"),
    ("sweep_cell_invalid", lambda w: ["-m", *DEPTH, "prune.ratio=null", "prune.num_blocks=1,2,9"],
     "sweep cell 2 of 3 (prune.num_blocks=9)"),
    ("sweep_cell_width_ratio", lambda w: ["-m", "prune=width", "prune.layer_start=1",
                                          "prune.layer_end=-1", "prune.ratio=0.2,0.0005"],
     "sweep cell 1 of 2 (prune.ratio=0.0005): prune.ratio=0.0005 rounds to nothing"),
]

SPECIAL = {  # cases that need the environment changed, not just the arguments
    "results_read_only": (DEPTH, "is not writable"),
    "disk_full": ([*DEPTH, "recover=cpt", "recover.tokens=4096"], "GiB free"),
    "assets_missing": (["eval.ppl_sources=[wiki_test]"], "eval.ppl_sources: no wheel"),
    # the opt-in second model, selected before it was fetched: the line says how to fetch it
    "gemma3_not_fetched": (["model.path=null", "model=gemma3_270m"],
                           "run `python -m harness.assets --gemma3` once"),
    "harness_cache_is_file": ([], "HARNESS_CACHE="),
}


def _invoke(argv: list[str]) -> int:
    """Exit code of `harness *argv` run in this process (flags such as -m go first)."""
    GlobalHydra.instance().clear()
    try:
        cli.main(sorted(argv, key=lambda a: not a.startswith("-")))
    except SystemExit as e:
        return e.code
    finally:
        GlobalHydra.instance().clear()
    return 0


def _base(w, tmp_path) -> list[str]:
    return [f"model.path={w['tiny']}", f"eval.ppl_sources=[{w['corpus.txt']}]", "eval.seq_len=32",
            f"data.calib_source={w['corpus.txt']}", "data.calib_samples=4",
            "data.calib_seq_len=16", f"cache_dir={tmp_path / 'cache'}",
            f"results_dir={tmp_path / 'results'}", "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]


def _assert_refused(code, err: str, phrase: str, tmp_path: Path, w) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert phrase in lines[0], lines[0]
    run = tmp_path / "run"
    assert not run.exists() or {p.name for p in run.iterdir()} <= HYDRA_OWN
    sweep = tmp_path / "sweep"
    assert not sweep.exists() or {p.name for p in sweep.iterdir()} <= {"multirun.yaml"}
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "results").exists()
    for name in ("garbage_results", "foreign_results"):  # left as they were
        assert {p.name for p in w[name].iterdir()} == {"results.csv"}


@pytest.mark.parametrize("name, overrides, phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line(name, overrides, phrase, w, tmp_path, capfd):
    code = _invoke([*_base(w, tmp_path), *overrides(w)])
    _assert_refused(code, capfd.readouterr().err, phrase, tmp_path, w)


@pytest.mark.parametrize("name", sorted(SPECIAL))
def test_bad_environment_is_refused_in_one_line(name, w, tmp_path, capfd, monkeypatch):
    from harness.validation import paths, texts

    overrides, phrase = SPECIAL[name]
    if name == "results_read_only":  # as root, chmod cannot make a directory read-only
        real = os.access
        monkeypatch.setattr(paths.os, "access", lambda p, mode: real(p, mode) and not str(
            p).startswith(str(tmp_path)))
    elif name == "gemma3_not_fetched":
        monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "empty_harness_cache"))
    elif name == "harness_cache_is_file":
        monkeypatch.setenv("HARNESS_CACHE", str(w["a_file"]))
    elif name == "disk_full":
        free = shutil.disk_usage(tmp_path)._replace(free=1 << 20)
        monkeypatch.setattr(paths.shutil, "disk_usage", lambda p: free)
    else:  # an offline machine without the protocol's text wheel
        def missing(split):
            raise texts.AssetError("no wheel exllamav2==0.3.2: download it by hand")
        monkeypatch.setattr(texts.protocol, "split_documents", missing)
    code = _invoke([*_base(w, tmp_path), *overrides])
    _assert_refused(code, capfd.readouterr().err, phrase, tmp_path, w)


def test_the_battery_is_large():
    assert len(CASES) + len(SPECIAL) >= 100


def test_remote_code_never_ran(w, tmp_path, capfd):
    """The family check reads config.json itself: the checkpoint's own code stays unimported."""
    code = _invoke([*_base(w, tmp_path), f"model.path={w['remote_code']}",
                    "model.trust_remote_code=true"])
    assert code == 2 and not (w["remote_code"] / "RAN").exists(), capfd.readouterr().err


def test_ctrl_c_exits_130_in_one_line_and_the_rerun_resumes(w, tmp_path):
    """SIGINT mid-training: exit 130, one line (no traceback) saying what was kept; the same
    command again finishes the run."""
    import signal
    import time

    cmd = [sys.executable, "-m", "harness", *_base(w, tmp_path), "recover=cpt",
           "recover.tokens=65536", "recover.seq_len=32", "recover.batch_size=4",
           f"recover.data={w['corpus.txt']}", "recover.save_steps=20", "recover.disable_tqdm=true",
           "recover.epochs_ok=true"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    marker = "work/*/cpt/checkpoint-*/COMPLETE"  # a checkpoint the rerun can resume from
    while time.time() < deadline and not list((tmp_path / "cache").glob(marker)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted")
    assert not (tmp_path / "results" / "results.csv").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    row = pd.read_csv(tmp_path / "results" / "results.csv").iloc[0]
    assert row["recover/cpt/resumed_from_step"] >= 20 and row["recover/steps"] == 512


@pytest.mark.parametrize("args, phrase", [
    (["prune=foo"], "prune=foo is not an option of prune"),
    (["model.path=acme-labs/tiny-llama"], "hub is unreachable"),
])
def test_real_process_prints_one_line_and_exits_2(args, phrase, w, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "harness", *_base(w, tmp_path), *args],
                         capture_output=True, text=True, timeout=300, env=env)
    _assert_refused(res.returncode, res.stderr, phrase, tmp_path, w)


def test_hub_id_loads_when_the_hub_is_reachable(w, tmp_path, monkeypatch, capfd):
    """`model.path=org/name` is resolved by the hub resolver (here standing in for the hub)."""
    fetched = []
    monkeypatch.setattr(hub, "_resolved", {})
    monkeypatch.setattr(hub, "download", lambda repo_id, trust_remote_code=False: fetched.append(
        repo_id) or str(w["tiny"]))
    code = _invoke([*_base(w, tmp_path), "model.path=acme-labs/tiny-llama"])
    assert code == 0, capfd.readouterr().err
    table = pd.read_csv(tmp_path / "results" / "results.csv")
    assert table.loc[0, "model"] == "acme-labs/tiny-llama" and fetched == ["acme-labs/tiny-llama"]
    assert 1.0 < table.loc[0, f"ppl/{w['corpus.txt']}"] < 1e4

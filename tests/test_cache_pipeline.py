"""A damaged cache entry of any stage kind is recomputed to the same result; a NaN never becomes a
results row. On a tiny width-pruned, LoRA-recovered model, every file of every entry is damaged
in turn (as a new process would meet it)."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch
from test_bad_inputs import _invoke
from test_cache import _corruptions
from test_config import _compose

from harness.cache import store as cache_mod
from harness.cache.store import ENTRY, MANIFEST, StageCache
from harness.config import validate
from harness.pipeline import Run

STAGES = ("importance", "pruned", "recovered", "efficiency", "ppl")
VOLATILE = ("time", "tokens_per_s")  # wall-clock figures differ between computations


def _overrides(tiny_dir, text_file, tmp_path):
    return [f"model.path={tiny_dir}", f"eval.ppl_sources=[{text_file}]", "eval.seq_len=32",
            f"data.calib_source={text_file}", "data.calib_samples=4", "data.calib_seq_len=16",
            "prune=width", "prune.criterion=taylor", "prune.layer_start=0", "prune.layer_end=4",
            "prune.ratio=0.2", "recover=lora", "recover.tokens=512", "recover.seq_len=32",
            "recover.batch_size=4", f"recover.data={text_file}", "recover.disable_tqdm=true",
            f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}",
            "logger=none"]


def _stable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not any(s in k for s in VOLATILE)}


def _manifests(root):
    return {p.parent.relative_to(root).as_posix(): json.loads(p.read_text())["files"]
            for p in root.glob(f"*/*/{MANIFEST}") if not p.parts[-3].startswith(".")}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One complete run: its cache, its metrics and the manifests of its entries."""
    from harness.models.loader import save_model
    from harness.models.tiny import tiny_model, tiny_tokenizer

    tmp = tmp_path_factory.mktemp("first")
    tiny = save_model(tiny_model("llama"), tiny_tokenizer(), tmp / "tiny")
    text = tmp / "corpus.txt"
    text.write_text("\n\n".join(f"Document {i}: the quick brown fox jumps over the lazy dog {i}"
                                " times." * 3 for i in range(12)))
    spec = validate(_compose(_overrides(tiny, text, tmp)))
    metrics = Run(spec, tmp / "run0", StageCache(tmp / "cache")).execute()
    manifests = _manifests(tmp / "cache")
    # plus the tokenized training text, read only when training (tests/test_corpus.py)
    assert sorted(e.split("/")[0] for e in manifests) == sorted([*STAGES, "corpus"])
    return spec, tmp / "cache", metrics, manifests


@pytest.mark.parametrize("stage", STAGES)
def test_damaging_any_file_of_an_entry_recomputes_the_same_result(stage, first_run, tmp_path,
                                                                  monkeypatch):
    spec, cache0, metrics0, manifests0 = first_run
    root = tmp_path / "cache"
    shutil.copytree(cache0, root)
    (entry,) = [e for e in manifests0 if e.startswith(f"{stage}/")]
    (pruned,) = [e for e in manifests0 if e.startswith("pruned/")]
    files = [*manifests0[entry], MANIFEST]
    damage = list(_corruptions().values())
    for i, name in enumerate(files):
        damage[i % len(damage)](root / entry / name)
        if stage == "importance":  # scores are read only while pruning: make pruning happen
            shutil.rmtree(root / pruned)
        monkeypatch.setattr(cache_mod, "_HASHED", set())  # what a new process sees
        cache = StageCache(root)
        metrics = Run(spec, tmp_path / f"run{i}", cache).execute()
        redone = [entry, pruned] if stage == "importance" else [entry]
        assert cache.computed == redone, (name, cache.computed)
        assert _stable(metrics) == _stable(metrics0), name
        again = _manifests(root)[entry]
        assert {k: v for k, v in again.items() if k != ENTRY} == {
            k: v for k, v in manifests0[entry].items() if k != ENTRY}, name  # bit-identical
    assert len(list((root / cache_mod.CORRUPT).iterdir())) == len(files)


def test_a_nan_result_fails_the_run_naming_the_stage_and_writes_no_row(tiny_dir, text_file,
                                                                       tmp_path, capfd):
    from harness.models.loader import load_model, save_model

    model, tok = load_model(str(tiny_dir))
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    broken = save_model(model, tok, tmp_path / "nan_model")
    argv = [*_overrides(broken, text_file, tmp_path)[:3], f"results_dir={tmp_path / 'results'}",
            f"cache_dir={tmp_path / 'cache'}", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    code = _invoke(argv)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]  # after progress bars
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: stage ppl gave a non-finite result/ppl"), lines[0]
    assert "no results row" in lines[0]
    assert not (tmp_path / "results" / "results.csv").exists()
    assert not list((tmp_path / "cache").glob("ppl/*"))  # never cached
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_full_disk_fails_the_run_in_one_line_and_leaves_no_partial_entry(
        tiny_dir, text_file, tmp_path, capfd, monkeypatch):
    def no_space(entry_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(entry_dir))

    monkeypatch.setattr(cache_mod, "write_manifest", no_space)
    argv = [*_overrides(tiny_dir, text_file, tmp_path)[:3], f"results_dir={tmp_path / 'results'}",
            f"cache_dir={tmp_path / 'cache'}", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    code = _invoke(argv)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: disk full ([Errno 28] No space left"), lines[0]
    assert not (tmp_path / "results" / "results.csv").exists()
    assert not [p for p in (tmp_path / "cache").rglob("*")
                if p.is_file() and p.parent.name != "locks"]  # no half entry (empty key locks stay)

"""Nothing stale: every input is keyed by what it holds, not by where it lies or when it changed.

One test per input kind: an evaluation text rewritten in place gets a new PPL (end to end); a
rewritten calibration text new importance scores; a rewritten training text a new recovery;
weights replaced by a same-size file with the same mtime (`cp -p`) a new model key; a hub model
whose `main` moved to another commit a new model key. Moving an input elsewhere keeps its keys.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
from test_config import _compose

from harness.config import validate
from harness.identity import stage_keys
from harness.keys import config_key


def _keys(overrides: list[str]) -> dict[str, str]:
    return {k: config_key(v) for k, v in stage_keys(validate(_compose(overrides))).items()}


def _rewrite_same_size(path) -> None:
    """Change the bytes, keep the size and the mtime (what `cp -p` of another file does)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _base(tiny_dir, text_file, tmp_path) -> list[str]:
    return [f"model.path={tiny_dir}", f"eval.ppl_sources=[{text_file}]", "eval.seq_len=32",
            f"data.calib_source={text_file}", "data.calib_samples=4", "data.calib_seq_len=16",
            f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}",
            "logger=none"]


def test_an_eval_text_rewritten_in_place_is_evaluated_again(tiny_dir, text_file, tmp_path):
    cmd = [sys.executable, "-m", "harness", *_base(tiny_dir, text_file, tmp_path)]

    def run(name):
        res = subprocess.run([*cmd, f"hydra.run.dir={tmp_path / name}"], capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads((tmp_path / name / "stages.json").read_text())["computed"]

    run("first")
    text_file.write_text(text_file.read_text().replace("fox", "cat"))
    assert [s.split("/")[0] for s in run("second")] == ["ppl"]
    table = pd.read_csv(tmp_path / "results" / "results.csv")
    assert len(table) == 2 and table[f"ppl/{text_file}"].nunique() == 2


def test_calibration_and_training_texts_are_keyed_by_content(tiny_dir, text_file, tmp_path):
    args = [*_base(tiny_dir, text_file, tmp_path), "prune=depth", "prune.protect_first=1",
            "prune.protect_last=1", "recover=lora", "recover.tokens=1024", "recover.seq_len=32",
            "recover.batch_size=4"]
    train = tmp_path / "train.txt"
    shutil.copy(text_file, train)
    before = _keys([*args, f"recover.data={train}"])
    moved = tmp_path / "elsewhere.txt"
    shutil.copy(train, moved)
    assert _keys([*args, f"recover.data={moved}"]) == before  # where it lies does not matter
    _rewrite_same_size(train)
    after = _keys([*args, f"recover.data={train}"])
    assert after["recovered"] != before["recovered"] and after["pruned"] == before["pruned"]
    _rewrite_same_size(text_file)  # the calibration text (and the evaluation text)
    calib = _keys([*args, f"recover.data={train}"])
    assert calib["importance"] != after["importance"] and calib["pruned"] != after["pruned"]


def test_weights_copied_in_with_the_same_size_and_mtime_get_a_new_key(tiny_dir, text_file,
                                                                     tmp_path):
    args = _base(tiny_dir, text_file, tmp_path)
    before = _keys(args)
    _rewrite_same_size(tiny_dir / "model.safetensors")
    after = _keys(args)
    assert after["efficiency"] != before["efficiency"]
    assert all(after[k] != before[k] for k in before)


def test_a_hub_model_is_keyed_by_its_commit(tiny_dir, text_file, tmp_path, monkeypatch):
    """A hub id resolves (here, offline) to the snapshot `refs/main` names; moving main to
    another commit changes every key."""
    from harness.models import hub

    repo = tmp_path / "hub" / "models--acme--tiny"
    for commit in ("a" * 40, "b" * 40):
        shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    _rewrite_same_size(repo / "snapshots" / ("b" * 40) / "model.safetensors")
    (repo / "refs").mkdir()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "_resolved", {})
    args = [a if not a.startswith("model.path=") else "model.path=acme/tiny"
            for a in _base(tiny_dir, text_file, tmp_path)]
    keys = {}
    for commit in ("a" * 40, "b" * 40):
        (repo / "refs" / "main").write_text(commit)
        hub._resolved.clear()
        spec = validate(_compose(args))
        keys[commit] = stage_keys(spec)["efficiency"]["model"]["model"]
        assert keys[commit]["weights"] == f"commit:{commit}"
    assert keys["a" * 40]["path"] == "acme/tiny"

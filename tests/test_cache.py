"""Stage cache entries are verified before use: a bad one is moved aside and recomputed, a
non-finite result is never cached, and `harness cache verify|gc` check and trim the cache."""

import json
import math
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from harness import cli
from harness.cache import store as cache_mod
from harness.cache.store import (
    CORRUPT,
    MANIFEST,
    NonFiniteResult,
    StageCache,
    check_entry,
    config_key,
)
from harness.cache.tools import main as cache_main


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test starts as a new process would: no entry hashed yet."""
    monkeypatch.setattr(cache_mod, "_HASHED", set())


def _writer(value: float = 1.0, calls: list | None = None):
    def compute(tmp):
        if calls is not None:
            calls.append(1)
        save_file({"w": torch.full((4, 4), value)}, str(tmp / "w.safetensors"))
        (tmp / "sub").mkdir()
        (tmp / "sub" / "notes.json").write_text(json.dumps({"value": value}))
        return {"value": value}
    return compute


def _corruptions():
    """(name, how to damage one file) for each kind of damage a disk or a user can do."""
    def flip(p):  # same size: only the hash can tell
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    return {"flip": flip, "truncate": lambda p: p.write_bytes(p.read_bytes()[:-3]),
            "append": lambda p: p.write_bytes(p.read_bytes() + b"x"), "delete": lambda p: p.unlink()}


@pytest.mark.parametrize("how", ["flip", "truncate", "append", "delete"])
@pytest.mark.parametrize("target", ["w.safetensors", "sub/notes.json", "entry.json", MANIFEST])
def test_any_damaged_file_is_moved_aside_and_recomputed(tmp_path, target, how, monkeypatch):
    calls = []
    cache = StageCache(tmp_path)
    path, meta = cache.get_or_compute("pruned", {"a": 1}, _writer(calls=calls))
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == {"w.safetensors", "sub/notes.json", "entry.json"}
    assert check_entry(path) is None
    _corruptions()[how](path / target)
    monkeypatch.setattr(cache_mod, "_HASHED", set())  # a new process: hashes are checked again
    again = StageCache(tmp_path)
    path2, meta2 = again.get_or_compute("pruned", {"a": 1}, _writer(calls=calls))
    assert len(calls) == 2 and again.computed == [f"pruned/{config_key({'a': 1})}"]
    assert meta2["meta"] == meta["meta"] and check_entry(path2) is None
    moved = list((tmp_path / CORRUPT).iterdir())
    assert len(moved) == 1 and moved[0].name.startswith(f"pruned-{path.name}-")


def test_sizes_are_checked_on_every_read_hashes_on_the_first(tmp_path):
    calls = []
    cache = StageCache(tmp_path)
    path, _ = cache.get_or_compute("ppl", {"a": 1}, _writer(calls=calls))
    _corruptions()["flip"](path / "w.safetensors")
    cache.get_or_compute("ppl", {"a": 1}, _writer(calls=calls))  # hashed when written: trusted
    assert len(calls) == 1
    _corruptions()["truncate"](path / "w.safetensors")
    cache.get_or_compute("ppl", {"a": 1}, _writer(calls=calls))  # a size change is always seen
    assert len(calls) == 2


def test_non_finite_result_is_never_cached(tmp_path):
    cache = StageCache(tmp_path)
    with pytest.raises(NonFiniteResult, match="stage ppl gave a non-finite result/ppl"):
        cache.json_stage("ppl", {"a": 1}, lambda: {"ppl": math.nan, "tokens": 10})
    with pytest.raises(NonFiniteResult, match="recover/final_loss"):
        cache.get_or_compute("recovered", {"a": 1},
                             lambda tmp: {"metrics": {"recover/final_loss": math.inf}})
    left = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != "locks"]
    assert not left  # no entry, no temp dir left (the keys' lock files stay, empty)


def _legacy_entry(root, stage, keyed_on, meta, files=None):
    """An entry as written before manifests: entry.json without `format`, no manifest.json."""
    path = root / stage / config_key(keyed_on)
    path.mkdir(parents=True)
    for name, write in (files or {}).items():
        write(path / name)
    (path / "entry.json").write_text(json.dumps(
        {"stage": stage, "key": path.name, "config": keyed_on, "meta": meta, "seconds": 1.0}))
    return path


def test_entries_from_before_manifests_are_checked_then_adopted(tmp_path):
    good = _legacy_entry(tmp_path, "ppl", {"a": 1}, {"result": {"ppl": 12.5}})
    _legacy_entry(tmp_path, "ppl", {"a": 2}, {"result": {"ppl": math.nan}})
    weights = {"w.safetensors": lambda p: save_file({"w": torch.ones(8)}, str(p))}
    ok_model = _legacy_entry(tmp_path, "pruned", {"a": 3}, {}, weights)
    cut = _legacy_entry(tmp_path, "pruned", {"a": 4}, {}, weights)
    (cut / "w.safetensors").write_bytes((cut / "w.safetensors").read_bytes()[:-5])
    cache = StageCache(tmp_path)
    assert cache.json_stage("ppl", {"a": 1}, lambda: {"ppl": 1.0}) == {"ppl": 12.5}  # kept
    assert check_entry(good) is None  # and given its manifest
    assert cache.json_stage("ppl", {"a": 2}, lambda: {"ppl": 3.0}) == {"ppl": 3.0}  # NaN: redone
    cache.get_or_compute("pruned", {"a": 3}, _writer())
    cache.get_or_compute("pruned", {"a": 4}, _writer())
    assert sorted(s.split("/")[0] for s in cache.computed) == ["ppl", "pruned"]
    assert check_entry(ok_model) is None and (cut / "sub").is_dir()  # the truncated one redone
    assert len(list((tmp_path / CORRUPT).iterdir())) == 2


def test_entries_record_what_they_were_built_from_and_runs_what_they_used(tmp_path):
    cache = StageCache(tmp_path)

    def pruned(tmp):
        cache.get_or_compute("importance", {"i": 1}, _writer())
        return {}

    cache.get_or_compute("pruned", {"p": 1}, pruned)
    cache.json_stage("ppl", {"e": 1}, lambda: {"ppl": 2.0})
    imp, prn, ppl = (f"{s}/{config_key(k)}" for s, k in (
        ("importance", {"i": 1}), ("pruned", {"p": 1}), ("ppl", {"e": 1})))
    assert cache.meta("pruned", prn.split("/")[1])["inputs"] == [imp]
    assert cache.used == [imp, prn, ppl]
    record = json.loads(cache.record_run("abc", tmp_path / "run").read_text())
    assert record["stages"] == [imp, prn, ppl]


def _cli(capsys, *argv):
    code = cache_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cache_verify_finds_a_same_size_change_and_gc_removes_only_unneeded(tmp_path, capsys):
    root, results = tmp_path / "cache", tmp_path / "results"
    used = StageCache(root)
    used.get_or_compute("pruned", {"p": 1}, lambda tmp: used.get_or_compute(
        "importance", {"i": 1}, _writer()) and {})
    used.json_stage("ppl", {"e": 1}, lambda: {"ppl": 2.0})
    used.record_run("run1", tmp_path)
    orphan = StageCache(root)
    orphan.json_stage("ppl", {"e": 2}, lambda: {"ppl": 3.0})  # a run that never wrote a row
    results.mkdir()
    pd.DataFrame([{"run_key": "run1", "ppl/x": 2.0}]).to_csv(results / "results.csv", index=False)
    with pytest.raises(SystemExit) as done:  # through the `harness` entry point
        cli.main(["cache", "verify", "--cache-dir", str(root)])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "4 entries" in out and "all intact" in out
    _corruptions()["flip"](root / "importance" / config_key({"i": 1}) / "w.safetensors")
    code, out, _ = _cli(capsys, "verify", "--cache-dir", str(root))
    assert code == 1 and f"bad    importance/{config_key({'i': 1})}" in out
    args = ("gc", "--cache-dir", str(root), "--results-dir", str(results), "--min-age-hours", "0")
    code, out, _ = _cli(capsys, *args)  # dry run: lists, deletes nothing
    lines = [line for line in out.splitlines() if line.startswith("remove")]
    assert code == 0 and len(lines) == 2 and "would free" in out
    assert f"ppl/{config_key({'e': 2})}" in out and f"{CORRUPT}/importance-" in out
    assert (root / "ppl" / config_key({"e": 2})).exists()
    code, out, _ = _cli(capsys, *args, "--yes")
    assert code == 0 and not (root / "ppl" / config_key({"e": 2})).exists()
    assert not (root / CORRUPT).exists() or not any((root / CORRUPT).iterdir())
    assert (root / "pruned" / config_key({"p": 1})).exists()  # needed by run1's row
    assert (root / "ppl" / config_key({"e": 1})).exists()


def test_gc_refuses_when_a_row_has_no_stage_record(tmp_path, capsys):
    root, results = tmp_path / "cache", tmp_path / "results"
    StageCache(root).json_stage("ppl", {"e": 1}, lambda: {"ppl": 2.0})
    results.mkdir()
    pd.DataFrame([{"run_key": "old", "ppl/x": 2.0}]).to_csv(results / "results.csv", index=False)
    args = ("gc", "--cache-dir", str(root), "--results-dir", str(results), "--min-age-hours", "0")
    code, out, err = _cli(capsys, *args, "--yes")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no stage record" in err
    assert (root / "ppl" / config_key({"e": 1})).exists()
    code, out, _ = _cli(capsys, "gc", "--cache-dir", str(root), "--results-dir", str(results),
                        "--force")
    assert code == 0 and "1 items younger than 1 h kept" in out  # a running sweep's, maybe


def test_an_entry_replaced_by_a_file_is_moved_aside_and_recomputed(tmp_path, caplog):
    cache = StageCache(tmp_path)
    first = cache.json_stage("ppl", {"e": 1}, lambda: {"ppl": 3.0})
    entry = cache.path("ppl", config_key({"e": 1}))
    shutil.rmtree(entry)
    entry.write_text("not an entry")
    again = StageCache(tmp_path).json_stage("ppl", {"e": 1}, lambda: {"ppl": 3.0})
    assert again == first and entry.is_dir()
    assert [p.name.split("-")[0] for p in (tmp_path / CORRUPT).iterdir()] == ["ppl"]
    assert "not a directory" in caplog.text

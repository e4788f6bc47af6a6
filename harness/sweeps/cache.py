"""Stage cache: every expensive stage result on disk, keyed by exactly the config that determines it.

An entry is a directory `<root>/<stage>/<key>/` holding the stage's files plus `entry.json` (the
config it was keyed on, its own metadata, how long it took). Entries are built in a temporary
sibling directory and renamed into place, so a killed run never leaves a half-written entry that a
later run could read. Two processes racing on one key both compute; the first rename wins and the
second discards its copy. A temporary directory is named after its host and process, so the
leftovers of a killed run (a whole model copy) are removed by the next run on that host.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness.tracking.io import read_json, write_json_atomic


def config_key(obj) -> str:
    """Stable 16-hex-digit hash of a JSON-able config (dict key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class StageCache:
    """Get-or-compute for stage results; counts what it computed so tests can see the work done."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.computed: list[str] = []  # "<stage>/<key>" of each entry computed by this process

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def has(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / "entry.json").exists()

    def meta(self, stage: str, key: str) -> dict:
        return read_json(self.path(stage, key) / "entry.json")

    def get_or_compute(
        self, stage: str, keyed_on: dict, compute: Callable[[Path], dict | None]
    ) -> tuple[Path, dict]:
        """(entry dir, entry metadata). `compute(tmp_dir)` writes files into tmp_dir and returns
        JSON-able metadata; it only runs when no complete entry exists for this config."""
        key = config_key(keyed_on)
        final = self.path(stage, key)
        if self.has(stage, key):
            return final, self.meta(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(final.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-{_HOST}-{os.getpid()}-", dir=final.parent))
        try:
            start = time.perf_counter()
            meta = compute(tmp) or {}
            entry = {"stage": stage, "key": key, "config": keyed_on, "meta": meta,
                     "seconds": time.perf_counter() - start}
            write_json_atomic(tmp / "entry.json", entry)
            try:
                os.rename(tmp, final)  # atomic; fails if another process finished first
            except OSError:
                if not self.has(stage, key):
                    raise
            else:
                self.computed.append(f"{stage}/{key}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final, self.meta(stage, key)

    def json_stage(self, stage: str, keyed_on: dict, compute: Callable[[], dict]) -> dict:
        """Cached JSON result: `compute()` returns the result dict itself."""
        _, entry = self.get_or_compute(stage, keyed_on, lambda tmp: {"result": compute()})
        return entry["meta"]["result"]


_HOST = socket.gethostname().replace("-", "_")


def _remove_orphans(stage_dir: Path) -> None:
    """Delete temporary entry dirs (`.<key>-<host>-<pid>-*`) whose process on this host is gone."""
    for tmp in stage_dir.glob(f".*-{_HOST}-*-*"):
        pid = tmp.name.split("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    return True


def link_tree(src: Path, dst: Path) -> Path:
    """Expose a cached model directory at `dst` with hard links (a copy across filesystems)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
    try:
        for f in src.iterdir():
            if f.is_file() and f.name != "entry.json":
                try:
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst

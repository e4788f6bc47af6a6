"""Stage cache: every expensive stage result on disk, keyed by exactly the config that determines it.

An entry is a directory `<root>/<stage>/<key>/` holding the stage's files, `entry.json` (the
config it was keyed on, its own metadata, the entries it was built from, how long it took) and,
written last, `manifest.json` (size and sha256 of every other file). Entries are built in a
temporary sibling directory and renamed into place, so a killed run never leaves a half-written
entry that a later run could read. One process computes a key at a time: it holds the key's
lock (`<root>/locks/<stage>-<key>`, flock) while it computes; another process asking for the
same key waits (saying so in one line), then reads the finished entry. A temporary directory is
named after its host and process, so the leftovers of a killed run (a whole model copy) are
removed by the next run on that host.

Reading an entry verifies it against its manifest: file sizes on every read, sha256 on the first
read in each process. A bad entry (a file changed, truncated, missing or added, a non-finite
number in its metadata, or a file where its directory should be) is reported in one line, moved
aside to `<root>/.corrupt/` and recomputed;
`harness cache gc` removes what was moved aside. An entry written before manifests existed
(`entry.json` without `format`) is adopted once: its JSON files must parse, its safetensors
headers must cover their files exactly and its numbers must be finite; then its manifest is
written. A stage whose result holds NaN or inf raises `NonFiniteResult` and is never cached.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.io import atomic_dir, read_json, sha256_file, write_json_atomic
from harness.keys import config_key

log = logging.getLogger(__name__)
FORMAT = 2  # entry.json["format"]; entries without it predate manifests
ENTRY, MANIFEST, CORRUPT, LOCKS = "entry.json", "manifest.json", ".corrupt", "locks"
RESERVED = ("runs", "work", LOCKS, CORRUPT)  # directories of the cache root that hold no stage
_HASHED: set[str] = set()  # entry dirs whose sha256 this process has checked


class NonFiniteResult(RuntimeError):
    """A stage produced NaN or inf; nothing was cached. The message names the stage."""


def non_finite(obj, prefix: str = "") -> str | None:
    """Path of the first NaN/inf number inside a JSON-like value, else None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return prefix or "value"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        found = non_finite(v, f"{prefix}/{k}" if prefix else str(k))
        if found:
            return found
    return None


def _files(entry_dir: Path) -> dict[str, Path]:
    """Every file of an entry by its relative path, the manifest (and its temp file) excepted."""
    return {p.relative_to(entry_dir).as_posix(): p for p in sorted(entry_dir.rglob("*"))
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(f".{MANIFEST}-")}


def write_manifest(entry_dir: Path) -> None:
    files = {rel: {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for rel, p in _files(entry_dir).items()}
    write_json_atomic(entry_dir / MANIFEST, {"files": files})


def check_entry(entry_dir: Path, hashes: bool = True) -> str | None:
    """None when the entry matches its manifest (sizes; sha256 too with `hashes`) and its
    metadata is finite; otherwise the first problem, in words."""
    try:
        listed = read_json(entry_dir / MANIFEST)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is missing or unreadable"
    on_disk = _files(entry_dir)
    for rel in sorted(set(listed) ^ set(on_disk)):
        return f"{rel} is {'missing' if rel in listed else 'not in the manifest'}"
    for rel, want in listed.items():
        size = on_disk[rel].stat().st_size
        if size != want["size"]:
            return f"{rel} has {size} bytes, the manifest says {want['size']}"
        if hashes and sha256_file(on_disk[rel]) != want["sha256"]:
            return f"{rel} differs from the manifest (sha256)"
    return _entry_problem(entry_dir)


def _entry_problem(entry_dir: Path) -> str | None:
    try:
        entry = read_json(entry_dir / ENTRY)
        meta = entry["meta"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{ENTRY} is unreadable"
    bad = non_finite(meta)
    return f"{ENTRY} holds a non-finite {bad}" if bad else None


def check_legacy(entry_dir: Path) -> str | None:
    """What can be checked without a manifest: JSON files parse, safetensors headers are readable
    and cover their files exactly, metadata is finite."""
    from safetensors import safe_open

    for rel, path in _files(entry_dir).items():
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                with safe_open(str(path), "pt"):
                    pass
        except Exception as e:  # noqa: BLE001 - any failure to read means a bad file
            return f"{rel} is unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return _entry_problem(entry_dir)


class StageCache:
    """Get-or-compute for stage results; records what it computed and used, so tests can see the
    work done and `harness cache gc` can tell which entries a results row needs."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.computed: list[str] = []  # "<stage>/<key>" of each entry computed by this process
        self.used: list[str] = []  # every entry read or computed, in order, once each
        self._building: list[list[str]] = []  # entries read while computing each open entry
        self._held: set[str] = set()  # locks this process holds (re-entering one is a no-op)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def has(self, stage: str, key: str) -> bool:
        """A complete entry exists (not verified: `get_or_compute` verifies before use)."""
        return (self.path(stage, key) / ENTRY).exists()

    def meta(self, stage: str, key: str) -> dict:
        return read_json(self.path(stage, key) / ENTRY)

    def get_or_compute(
        self, stage: str, keyed_on: dict, compute: Callable[[Path], dict | None]
    ) -> tuple[Path, dict]:
        """(entry dir, entry metadata). `compute(tmp_dir)` writes files into tmp_dir and returns
        JSON-able metadata; it only runs when no intact entry exists for this config."""
        key = config_key(keyed_on)
        final = self.path(stage, key)
        if not self.intact(stage, key):
            with self.lock(stage, key):
                if not self.intact(stage, key):  # another process may have finished it
                    self._compute(stage, key, keyed_on, compute)
        self._note_use(f"{stage}/{key}")
        return final, self.meta(stage, key)

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Hold the key's lock for the block: one process at a time computes a key. Waiting
        for another process says so in one line; a dead holder's lock frees itself (flock)."""
        name = f"{stage}-{key}"
        if name in self._held:
            yield
            return
        path = self.root / LOCKS / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("cache: another process is computing %s/%s; waiting for it", stage, key)
                fcntl.flock(f, fcntl.LOCK_EX)
            self._held.add(name)
            try:
                yield
            finally:
                self._held.discard(name)
                fcntl.flock(f, fcntl.LOCK_UN)

    def json_stage(self, stage: str, keyed_on: dict, compute: Callable[[], dict]) -> dict:
        """Cached JSON result: `compute()` returns the result dict itself."""
        _, entry = self.get_or_compute(stage, keyed_on, lambda tmp: {"result": compute()})
        return entry["meta"]["result"]

    def record_run(self, run_key: str, run_dir: str | Path) -> Path:
        """`<root>/runs/<run_key>.json`: the entries this run used (what its results row needs)."""
        return write_json_atomic(self.root / "runs" / f"{run_key}.json",
                                 {"run_key": run_key, "run_dir": str(run_dir), "stages": self.used})

    def intact(self, stage: str, key: str, rehash: bool = False) -> bool:
        """True when an entry exists and passes its checks (sha256 too on its first check in
        this process, or with `rehash`); a bad one is moved aside."""
        final = self.path(stage, key)
        if not final.is_dir():
            if final.exists() or final.is_symlink():  # something else stands where it belongs
                quarantine(self.root, final, "not a directory")
            return False
        if (final / MANIFEST).exists() or _format(final) == FORMAT:
            problem = check_entry(final, hashes=rehash or str(final) not in _HASHED)
        else:
            problem = check_legacy(final)
            if problem is None:
                _adopt(final)
        if problem is None:
            _HASHED.add(str(final))
            return True
        quarantine(self.root, final, problem)
        return False

    # ---- internals -------------------------------------------------------------------------
    def _compute(self, stage, key, keyed_on, compute) -> None:
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(final.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-{_HOST}-{os.getpid()}-", dir=final.parent))
        self._building.append([])
        try:
            start = time.perf_counter()
            meta = compute(tmp) or {}
            bad = non_finite(meta)
            if bad:
                raise NonFiniteResult(f"stage {stage} gave a non-finite {bad} (entry {key}); "
                                      "nothing was cached")
            entry = {"stage": stage, "key": key, "format": FORMAT, "config": keyed_on,
                     "meta": meta, "inputs": self._building[-1],
                     "seconds": time.perf_counter() - start}
            write_json_atomic(tmp / ENTRY, entry)
            write_manifest(tmp)  # last: an entry with a manifest is complete
            try:
                os.rename(tmp, final)  # atomic; fails if another process finished first
            except OSError:
                if not self.intact(stage, key):
                    raise
            else:
                _HASHED.add(str(final))
                self.computed.append(f"{stage}/{key}")
        finally:
            self._building.pop()
            shutil.rmtree(tmp, ignore_errors=True)

    def _note_use(self, name: str) -> None:
        if name not in self.used:
            self.used.append(name)
        if self._building and name not in self._building[-1]:
            self._building[-1].append(name)


def _format(entry_dir: Path):
    try:
        return read_json(entry_dir / ENTRY).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def _adopt(entry_dir: Path) -> None:
    """Give an entry from before manifests its manifest (skipped on a read-only cache)."""
    try:
        write_manifest(entry_dir)
        log.info("cache: %s predates manifests; checked and manifest written", entry_dir)
    except OSError:
        pass


def quarantine(root: Path, entry_dir: Path, problem: str) -> Path | None:
    """Move a bad entry to `<root>/.corrupt/` (one warning line); None if another process did."""
    name = f"{entry_dir.parent.name}-{entry_dir.name}-{time.time_ns()}-{os.getpid()}"
    dest = Path(root) / CORRUPT / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(entry_dir, dest)
    except FileNotFoundError:  # another process moved it first
        return None
    _HASHED.discard(str(entry_dir))
    log.warning("cache entry %s/%s is bad (%s): moved to %s, recomputing",
                entry_dir.parent.name, entry_dir.name, problem, dest)
    return dest


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
    with atomic_dir(dst) as tmp:
        for f in src.iterdir():
            if f.is_file() and f.name not in (ENTRY, MANIFEST):
                try:
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)
    return dst

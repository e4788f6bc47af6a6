"""Small atomic-write helpers: a file or directory is either absent (or the old one) or complete,
never half-written; and the sha256 of a file or a directory's files (what content keys hold)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json_atomic(path: str | Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A fresh temporary directory next to `path` to fill; when the block ends without an error
    it replaces `path` in one rename, otherwise it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_digests: dict[tuple, str] = {}  # (path, device, inode, size, mtime, ctime) -> sha256, per process


def content_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, or of a directory's files (relative path and sha256 of each,
    sorted), memoised for this process while the file's inode, size, mtime and ctime stay the
    same (ctime changes with every write and every `touch`/`cp -p`, and cannot be set back)."""
    path = Path(path)
    if path.is_dir():
        parts = [f"{f.relative_to(path).as_posix()}:{content_digest(f)}"
                 for f in sorted(path.rglob("*")) if f.is_file()]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()
    st = path.stat()
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _digests:
        _digests[key] = sha256_file(path)
    return _digests[key]

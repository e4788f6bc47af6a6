"""Directories a run writes (results table, stage cache, assets) and the disk space its model
stages need, checked by trying, before any work starts."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from harness.models.loader import resolve_device, resolve_dtype
from harness.recovery.registry import METHODS
from harness.validation.errors import InputError, first_line


def check_writable(path: str | Path, key: str) -> None:
    """`path` is a directory this process can create or write into: tried with a temporary
    file in it (or in its nearest existing parent), removed at once."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{key}={path} is a file, not a directory: choose a directory")
    existing = p.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{key}={path} cannot be created ({existing} is a file): "
                         "choose another directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{key}={path} is not writable ({existing}): fix its permissions "
                         f"or choose another {key}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise InputError(f"{key}={path} cannot be written ({existing}: {e.strerror}): choose "
                         f"another {key}") from None


def check_cache_dir(root: str | Path, key: str) -> None:
    """The stage cache can be created or written, and nothing stands where its directories go
    (a file named like a stage, `work`, `locks` or `.corrupt`)."""
    from harness.cache.store import RESERVED
    from harness.evaluation.registry import EVALUATIONS

    check_writable(root, key)
    root = Path(root)
    stages = {*RESERVED, "importance", "pruned", "recovered", *(e.name for e in EVALUATIONS)}
    if root.is_dir():
        for sub in sorted(root.iterdir()):
            if sub.name in stages and not sub.is_dir():
                raise InputError(f"{key}={root}: {sub} is a file where the cache keeps a "
                                 "directory: move it away")


def check_results_dir(results_dir: str | Path) -> None:
    """The results table can be read now and written at the end of the run."""
    from harness.tracking.results import TABLE, read_table

    if not str(results_dir or "").strip():
        raise InputError("results_dir is empty: give the directory for results.csv "
                         "(default: results)")
    check_writable(results_dir, "results_dir")
    for name in (TABLE, f"{TABLE}.lock"):
        path = Path(results_dir) / name
        if path.exists() and not path.is_file():
            raise InputError(f"results_dir={results_dir}: {name} is not a file: move it away")
    if not (Path(results_dir) / TABLE).exists():
        return
    try:
        table = read_table(results_dir)
        ok = table.empty or "run_key" in table.columns
        why = "no run_key column"
    except Exception as e:  # noqa: BLE001 - pandas raises parser, decode and OS errors
        ok, why = False, first_line(e)
    if not ok:
        raise InputError(f"results_dir={results_dir}: {TABLE} is not a results table ({why}): "
                         "move it aside or choose another results_dir")


def model_stage_bytes(spec, params: int) -> dict[str, int]:
    """Bytes the run's model-writing stages put in the cache, estimated from parameter counts:
    the pruned and recovered weights, and the recovery checkpoints (two kept, with AdamW state
    for full-parameter phases) that exist until the recovered entry is complete."""
    dtype = resolve_dtype(spec.model.dtype, resolve_device(spec.model.device))
    width = torch.empty((), dtype=dtype).element_size()
    ratio = getattr(spec.prune, "ratio", None)
    kept = int(params * (1 - ratio)) if spec.prune.name != "none" and ratio else params
    out = {}
    if spec.prune.name != "none":
        out["pruned"] = kept * width
    if spec.recover.name != "none":
        full = any(p.full_parameters for p in METHODS.get(spec.recover.name).phases)
        out["recovered"] = kept * width + (2 * kept * (width + 8) if full else 0)
    return out


def check_disk(root: str | Path, needs: dict[str, int]) -> None:
    """Enough free space under the cache `root` for `needs` ({stage: bytes})."""
    total = sum(needs.values())
    if not total:
        return
    existing = Path(root).absolute()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < total:
        parts = ", ".join(f"{k} {v / 2**30:.1f}" for k, v in needs.items())
        raise InputError(f"cache_dir={root}: about {total / 2**30:.1f} GiB needed ({parts}) but "
                         f"{free / 2**30:.1f} GiB free: free space or set cache_dir to a larger "
                         "disk")

"""The results table: one row per run, safe under concurrent appends, idempotent on repeats.

Rows live in `<results_dir>/results.csv`, keyed by `run_key` (a hash of the run's config). Every
write takes an exclusive file lock, rewrites the table to a temporary file and renames it into
place, so readers never see a half-written table and two processes never lose each other's rows.

A run shared by several experiments (the dense model, or depth ppl at 20% in both
`depth_criteria` and `severe_retraining`) is still one row: its `experiment` column lists them
all, comma-separated, and `by_experiment` gives each experiment its complete set of rows.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

TABLE = "results.csv"


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_table(results_dir: str | Path) -> pd.DataFrame:
    path = Path(results_dir) / TABLE
    if not path.exists():
        return pd.DataFrame()
    return pd.read_csv(path).copy()  # copy: one block per dtype, not per column (pandas 3)


def _labels(value) -> list[str]:
    return [] if pd.isna(value) else [x for x in str(value).split(",") if x]


def by_experiment(table: pd.DataFrame):
    """(experiment, its rows) for every experiment named in the table, in order of appearance;
    a row listed under several experiments appears in each. Each part keeps only the columns its
    own rows filled, so one experiment's speed or zero-shot columns never show up empty in
    another's tables, captions and figures."""
    if table.empty or "experiment" not in table:
        return
    labels = table["experiment"].map(_labels)
    for name in dict.fromkeys(x for names in labels for x in names):
        yield name, table[labels.map(lambda names, n=name: n in names)].dropna(axis=1, how="all")


def merge_labels(values) -> str:
    """Experiment labels of several cells as one sorted, comma-separated cell."""
    return ",".join(sorted({x for v in values for x in _labels(v)}))


def upsert_row(results_dir: str | Path, row: dict) -> pd.DataFrame:
    """Add `row` (must hold `run_key`), replacing any earlier row with the same key; the
    earlier row's experiment labels are kept alongside the new one."""
    if "run_key" not in row:
        raise ValueError("a results row needs a run_key")

    def upsert(table: pd.DataFrame) -> pd.DataFrame:
        nonlocal row
        if len(table):
            same = table["run_key"] == row["run_key"]
            if same.any() and "experiment" in row and "experiment" in table:
                row = {**row, "experiment": merge_labels(
                    [*table.loc[same, "experiment"], row["experiment"]])}
            table = table[~same]
        return pd.concat([table, pd.DataFrame([row])], ignore_index=True)

    return rewrite_table(results_dir, upsert)


def rewrite_table(results_dir: str | Path, change) -> pd.DataFrame:
    """Replace the table by `change(table)` under the lock, atomically; returns the new table."""
    path = Path(results_dir) / TABLE
    with _locked(path):
        table = change(read_table(results_dir))
        fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".csv", dir=path.parent)
        os.close(fd)
        try:
            table.to_csv(tmp, index=False)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return table


def has_row(results_dir: str | Path, run_key: str) -> bool:
    table = read_table(results_dir)
    return bool(len(table)) and bool((table["run_key"] == run_key).any())

"""What a run or a sweep prints when it ends: its own rows, not the whole results table.

A sweep's table shows every configuration key whose value varies across its rows (the keys it
swept, e.g. `prune.num_blocks`, `recover.lr`, `data.calib_seed`), then the metrics, so no two
rows look alike. A key only some rows have (a LoRA rank next to runs without LoRA) counts as
varying only when its present values differ. A single run prints its one row with the keys
that name it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.reporting.report import metric_columns
from harness.reporting.seeds import IDENTITY_PREFIXES
from harness.tracking.results import read_table

NAMING = ["prune.name", "prune.criterion", "prune.unit", "prune.ratio", "prune.num_blocks",
          "prune.unit_ratio", "recover.name", "recover.tokens"]


def varying_columns(rows: pd.DataFrame) -> list[str]:
    """Identity columns (in table order) with more than one distinct present value."""
    out = []
    for col in rows.columns:
        if col.startswith(IDENTITY_PREFIXES):
            values = rows[col].dropna().astype(str)
            if values.nunique() > 1:
                out.append(col)
    return out


def run_view(rows: pd.DataFrame) -> pd.DataFrame:
    """The varying keys (for one row: the keys that name it), then the metrics."""
    if rows.empty:
        return rows
    if len(rows) == 1:
        keys = [c for c in NAMING if c in rows and rows[c].notna().all()]
    else:
        keys = varying_columns(rows)
    metrics = [c for c in metric_columns(rows) if rows[c].notna().any()]
    return rows[keys + metrics].reset_index(drop=True)


def rows_under(results_dir: str | Path, run_dir: str | Path) -> pd.DataFrame:
    """The results rows written by runs whose run dir is `run_dir` or lies under it."""
    table = read_table(results_dir)
    if table.empty or "run_dir" not in table:
        return table.iloc[0:0]
    root = str(Path(run_dir).resolve())
    dirs = table["run_dir"].map(lambda d: str(Path(d).resolve()) if isinstance(d, str) else "")
    return table[(dirs == root) | dirs.str.startswith(root + "/")]


def print_experiment(results_dir: str | Path, experiment: str) -> pd.DataFrame:
    """Print the table of one experiment's rows (every sweep that ran it)."""
    from harness.tracking.results import by_experiment

    part = dict(by_experiment(read_table(results_dir))).get(experiment, pd.DataFrame())
    return _print(run_view(part), f"{experiment}", f"no results for {experiment} in {results_dir}")


def _print(view: pd.DataFrame, title: str, empty: str) -> pd.DataFrame:
    if view.empty:
        print(empty)
        return view
    print(f"\n== {title} ({len(view)} run{'s' if len(view) > 1 else ''}) ==")
    print(format_view(view))
    return view


def format_view(view: pd.DataFrame) -> str:
    with pd.option_context("display.max_columns", None, "display.width", 220,
                           "display.float_format", "{:.4g}".format):
        return view.to_string(index=False)


def print_rows(results_dir: str | Path, run_dir: str | Path, title: str) -> pd.DataFrame:
    """Print the table of the rows under `run_dir` (a sweep dir or one run's dir)."""
    return _print(run_view(rows_under(results_dir, run_dir)), title,
                  f"no results rows from {run_dir} in {results_dir}")

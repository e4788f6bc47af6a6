"""Rows that differ only by the calibration seed are one setting measured several times.

`seed_groups` labels each row by everything that determines it except `data.calib_seed`;
`mean_std` collapses a paper table's rows to one per group: a numeric cell whose values differ
becomes `mean ± std` (sample std, ddof=1), equal values stay as they are, and `n` counts the
seeds, so a reader can tell a gap between two methods from calibration-sampling noise.
"""

from __future__ import annotations

import pandas as pd

IDENTITY_PREFIXES = ("model.", "data.", "prune.", "recover.", "eval.")
SEED = "data.calib_seed"


def seed_groups(part: pd.DataFrame) -> pd.Series:
    """A label per row: its identity columns (the run key's fields) without the seed."""
    cols = [c for c in part.columns if c.startswith(IDENTITY_PREFIXES) and c != SEED]
    cols = ["model", *cols] if "model" in part else cols
    if not cols:
        return pd.Series(range(len(part)), index=part.index).astype(str)
    return part[cols].apply(lambda row: "|".join(map(str, row.tolist())), axis=1)


def has_repeats(part: pd.DataFrame) -> bool:
    """Whether some setting was run with more than one seed."""
    return SEED in part and seed_groups(part).duplicated().any()


def _cell(values: pd.Series, digits: int):
    values = values.dropna()
    if values.empty:
        return float("nan")
    if not pd.api.types.is_numeric_dtype(values) or values.nunique() == 1:
        return values.iloc[0]
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def mean_std(table: pd.DataFrame, groups: pd.Series, digits: int = 2) -> pd.DataFrame:
    """One row per group (first-appearance order): `mean ± std` where values differ, the value
    where they agree, and `n` (how many seeds)."""
    groups = pd.Series(groups.values, index=table.index)
    rows = []
    for _, members in table.groupby(groups, sort=False):
        row = {c: _cell(members[c], digits) for c in table.columns}
        row["n"] = len(members)
        rows.append(row)
    return pd.DataFrame(rows)


def seeds_note(part: pd.DataFrame) -> str | None:
    """Caption text: which seeds the rows span (None when no setting was repeated)."""
    if not has_repeats(part):
        return None
    seeds = sorted(int(s) for s in part[SEED].dropna().unique())
    return (f"mean ± std (sample, ddof=1) over n calibration seeds (data.calib_seed in "
            f"{seeds}); a value without ± agreed across seeds")

"""What differs between the rows a table or figure shows, so nothing that differs is pooled.

A results row carries its identity flattened (`model.*`, `data.*`, `prune.*`, `recover.*`,
`eval.*`). `differing(part)` names the identity columns whose recorded values differ among the
rows (a column a row lacks, e.g. `recover.lora_lr` on a CPT row, does not count as differing);
tables show them as columns, figures draw one line per combination of them, and captions name
the recovery settings (`recovery_note`). Calibration seeds are the one key pooled on purpose:
repeats over them make the error bars (reporting/seeds.py).
"""

from __future__ import annotations

import pandas as pd

IDENTITY = ("model.", "data.", "prune.", "recover.", "eval.")
POOLED = ("data.calib_seed",)  # repeats: averaged into mean +- std, never a line of its own
SHOWN = ("prune.name", "prune.criterion", "prune.ratio", "prune.unit_ratio", "recover.name",
         "model.name")  # every table and figure already shows these (or its x axis)


def differing(part: pd.DataFrame, shown=SHOWN) -> list[str]:
    """Identity columns (besides `shown` and seeds) with more than one recorded value."""
    out = []
    for col in part.columns:
        if not col.startswith(IDENTITY) or col in shown or col in POOLED:
            continue
        values = part[col].dropna().astype(str)
        if values.nunique() > 1:
            out.append(col)
    return out


def short(col: str) -> str:
    return col.split(".", 1)[1] if col.startswith(IDENTITY) else col


def label_of(keys: list[str], values) -> str:
    """' (tokens=8192, lr=0.001)' for the differing keys of one line; '' when none differ."""
    values = values if isinstance(values, tuple) else (values,)
    bits = [f"{short(k)}={v:g}" if isinstance(v, float) else f"{short(k)}={v}"
            for k, v in zip(keys, values, strict=True) if not (isinstance(v, float) and v != v)]
    return f" ({', '.join(bits)})" if bits else ""


def _values(part: pd.DataFrame, col: str) -> str:
    vals = part[col].dropna().unique().tolist() if col in part else []
    return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(vals, key=str))


def recovery_note(part: pd.DataFrame) -> str | None:
    """Budget, learning rates, schedule, world size and global batch of the recovered rows."""
    if "recover.name" not in part:
        return None
    rec = part[part["recover.name"].fillna("none") != "none"]
    if rec.empty:
        return None
    bits = [f"recovery budget {_values(rec, 'recover.tokens')} tokens"]
    for method, rows in rec.groupby("recover.name"):
        lrs = [f"{name} lr {_values(rows, col)}" for name, col in
               (("full", "recover.lr"), ("LoRA", "recover.lora_lr")) if _values(rows, col)]
        if lrs:
            bits.append(f"{method}: {', '.join(lrs)}")
    schedule = _values(rec, "recover.schedule") or "cosine"
    bits.append(f"schedule {schedule}")
    world = _values(rec, "recover/world_size") or _values(rec, "recover.world_size") or "1"
    bits.append(f"world size {world}")
    batch = _values(rec, "recover/global_batch")
    if batch:
        bits.append(f"global batch {batch} sequences of {_values(rec, 'recover.seq_len')} tokens")
    epochs = _values(rec.round({"recover/epochs": 2}) if "recover/epochs" in rec else rec,
                     "recover/epochs")
    if epochs:
        bits.append(f"epochs over the training data {epochs}")
    return ", ".join(bits)

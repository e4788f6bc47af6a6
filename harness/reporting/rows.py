"""A run's results row, and its run key rebuilt from the row after the key schema changes.

A row holds the run's identity, flattened (every determining field: `model.dtype`,
`prune.criterion`, `recover.tokens`, `eval.zeroshot.limit`, `data.calib_seed`, ...), its
metrics, and where and when it ran. `rekey_table` recomputes each row's `run_key` from those
columns (a field a row lacks takes its schema default, so a field added later with a default that
keeps the old behaviour keys old rows as the runs that made them) and rewrites the identity
columns as a new run would: `harness report --rekey` after a change to what the keys hold.
Rows written before the identity columns existed have their evaluation inferred from the metric
columns they filled.
"""

from __future__ import annotations

import time

import pandas as pd

from harness.config import RunSpec
from harness.data.config import DataConfig
from harness.evaluation.config import TASKS, EvalConfig
from harness.identity import run_identity
from harness.keys import config_key, from_columns
from harness.models.loader import EMBEDDED, ModelConfig
from harness.models.shapes import SHAPES
from harness.pruning.methods import PRUNE_METHODS
from harness.recovery.registry import METHODS
from harness.tracking.results import merge_labels
from harness.tracking.wandb_logger import flatten

IDENTITY_PREFIXES = ("model.", "data.", "prune.", "recover.", "eval.")


def result_row(spec: RunSpec, identity: dict, key: str, metrics: dict, run_dir) -> dict:
    """run key, experiment, model label, the run's identity (flat), metrics, run dir, time."""
    row = {"run_key": key, "experiment": spec.experiment,
           "model": spec.model.path or spec.model.name, **flatten(identity)}
    row.update(metrics)
    row.update({"run_dir": str(run_dir), "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    return row


def _present(row: dict, col: str) -> bool:
    return col in row and not pd.isna(row[col])


def _legacy_columns(row: dict) -> dict:
    """Identity columns of a row written before rows held them, from what it recorded: the
    model label, the ppl sources and zero-shot tasks it has numbers for, the speed grid."""
    out = {}
    label = row.get("model")
    if isinstance(label, str):
        out["model.name" if label in EMBEDDED or label in SHAPES else "model.path"] = label
    out["eval.ppl_sources"] = [c.removeprefix("ppl/") for c in row
                               if c.startswith("ppl/") and c.count("/") == 1 and _present(row, c)]
    if _present(row, "zeroshot/convention"):
        out.update({"eval.zeroshot.enabled": True,
                    "eval.zeroshot.tasks": [t for t in TASKS if _present(row, f"zeroshot/{t}")]})
        for name in ("convention", "limit", "source"):
            out[f"eval.zeroshot.{name}"] = row.get(f"zeroshot/{name}")
    out["eval.speed.enabled"] = _present(row, "eval.speed.backend")
    if _present(row, "speed/device"):
        out["eval.speed.device"] = row["speed/device"]
    return out


def spec_from_row(row: dict) -> tuple[RunSpec, dict]:
    """The typed configs a row was run with (schema defaults where it has no column), and the
    recorded values run_identity must not recompute (`weights`, `device`)."""
    if not _present(row, "model.weights"):
        row = {**row, **_legacy_columns(row)}
    prune_name = row["prune.name"] if _present(row, "prune.name") else "none"
    recover_name = row["recover.name"] if _present(row, "recover.name") else "none"
    spec = RunSpec(
        model=from_columns(ModelConfig, row, "model."),
        data=from_columns(DataConfig, row, "data."),
        prune=from_columns(PRUNE_METHODS.get(prune_name).config, row, "prune."),
        recover=from_columns(METHODS.get(recover_name).config, row, "recover.", name=recover_name),
        eval=from_columns(EvalConfig, row, "eval."),
    )
    recorded = {"weights": row.get("model.weights") if _present(row, "model.weights") else None,
                "device": row.get("eval.speed.device") if _present(row, "eval.speed.device")
                else None}
    return spec, recorded


def rekey_table(table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Every row with its run key and identity columns recomputed under the current schema;
    rows that now share a key (they differed only in fields that do not determine results) are
    merged into the newest one, keeping all their experiment labels. Returns (table, counts)."""

    rows, changed = [], 0
    for row in table.to_dict("records"):
        spec, recorded = spec_from_row(row)
        identity = run_identity(spec, **recorded)
        key = config_key(identity)
        changed += key != row.get("run_key")
        first = {"run_key": key, "experiment": row.get("experiment"), "model": row.get("model")}
        rest = {k: v for k, v in row.items() if not k.startswith(IDENTITY_PREFIXES)}
        rows.append({**first, **flatten(identity), **rest, "run_key": key})
    out = pd.DataFrame(rows)
    if out.empty:
        return out, {"rows": 0, "changed": 0, "merged": 0}
    out["experiment"] = out.groupby("run_key")["experiment"].transform(merge_labels)
    newest = out.sort_values("finished", kind="stable").drop_duplicates("run_key", keep="last")
    merged = out.loc[sorted(newest.index)].reset_index(drop=True)
    return merged, {"rows": len(table), "changed": changed, "merged": len(out) - len(merged)}

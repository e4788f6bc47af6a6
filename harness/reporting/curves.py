"""Recovery curves: held-out PPL over training tokens, one figure per pruning ratio, and the
tokens each method needs to reach a target PPL.

Each recovered row's run directory holds `eval_log.csv` (recover.eval_every > 0: held-out PPL
at 0 tokens, every eval_every tokens, and at the end). Lines never pool rows: one per
(pruning method, criterion, recovery method) plus any other key that differs between the rows
(reporting/differ.py). "Tokens to recover": per ratio and pruning, the target is the highest
final PPL any recovery method ends with there (a level every method reaches), and each method's
entry is the first logged point at or below it, so it reads to within one eval_every.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.reporting.differ import differing, label_of, recovery_note
from harness.reporting.figures import _legend_outside, _save, _styles, plt

LINE_KEYS = ["prune.name", "prune.criterion", "recover.name"]


def load_curves(part: pd.DataFrame) -> pd.DataFrame:
    """Every recovered row's eval_log.csv, with the row's keys, one frame (empty if none)."""
    frames = []
    for _, row in part.iterrows():
        path = Path(str(row.get("run_dir", ""))) / "eval_log.csv"
        if row.get("recover.name", "none") in ("none", None) or not path.is_file():
            continue
        log = pd.read_csv(path)
        for col in part.columns:
            if col.startswith(("prune.", "recover.", "model", "prune/")):
                log[col] = row[col]
        frames.append(log)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _lines(curves: pd.DataFrame, extra: list[str]):
    keys = [k for k in LINE_KEYS if k in curves] + extra
    return curves.fillna({"prune.criterion": ""}).groupby(keys, dropna=False), keys


def curve_figures(part: pd.DataFrame, prefix: Path) -> list[Path]:
    """`<prefix>_curves_<ratio>.png` (PDF, SVG beside it) for each ratio with curves."""
    curves = load_curves(part)
    if curves.empty:
        return []
    extra = [k for k in differing(part) if k not in LINE_KEYS and k in curves]
    out = []
    models = "/".join(str(m) for m in part["model"].dropna().unique()) if "model" in part else ""
    for ratio, at in curves.groupby("prune.ratio"):
        fig, ax = plt.subplots(figsize=(6.0, 3.8))
        styles = _styles()
        groups, keys = _lines(at, extra)
        for values, line in groups:
            values = values if isinstance(values, tuple) else (values,)
            method, criterion, recover = values[:3]
            color, marker = next(styles)
            line = line.sort_values("tokens_seen")
            ax.plot(line["tokens_seen"], line["eval_ppl"], marker=marker, color=color, ms=3,
                    lw=1.2, ls="-" if method == "depth" else "--",
                    label=f"{method} {criterion} + {recover}{label_of(extra, values[3:])}")
        ax.set(xlabel="training tokens seen", ylabel="held-out PPL (eval_data)", yscale="log")
        ax.set_title(f"Recovery curves at {100 * ratio:g}% pruned\n{models}; "
                     f"{recovery_note(part[part['prune.ratio'] == ratio])}", fontsize=6,
                     wrap=True)
        _legend_outside(ax)
        out.append(_save(fig, prefix.with_name(f"{prefix.name}_curves_{ratio:g}.png")))
    return out


def tokens_to_recover(part: pd.DataFrame) -> pd.DataFrame | None:
    """Per ratio, pruning and recovery method: start and final held-out PPL, the target (the
    highest final PPL of that ratio and pruning) and the first tokens at or below it."""
    curves = load_curves(part)
    if curves.empty:
        return None
    extra = [k for k in differing(part) if k not in LINE_KEYS and k in curves]
    rows = []
    by = ["prune.ratio", "prune.name", "prune.criterion"]
    for (ratio, method, criterion), at in curves.fillna({"prune.criterion": ""}).groupby(by):
        finals = {}
        groups, _ = _lines(at, extra)
        for values, line in groups:
            finals[values] = line.sort_values("tokens_seen")
        target = max(line["eval_ppl"].iloc[-1] for line in finals.values())
        for values, line in finals.items():
            values = values if isinstance(values, tuple) else (values,)
            hit = line[line["eval_ppl"] <= target * (1 + 1e-9)]
            rows.append({"Pruned %": round(100 * ratio, 1), "Pruning": f"{method} {criterion}",
                         "Recovery": values[2] + label_of(extra, values[3:]),
                         "PPL at 0": round(line["eval_ppl"].iloc[0], 2),
                         "final PPL": round(line["eval_ppl"].iloc[-1], 2),
                         "target PPL": round(target, 2),
                         "tokens to target": int(hit["tokens_seen"].iloc[0]) if len(hit) else None,
                         "budget": int(line["tokens_seen"].iloc[-1])})
    return pd.DataFrame(rows)


def curves_markdown(part: pd.DataFrame) -> str:
    """The tokens-to-recover table as a markdown section ('' when no row has a curve)."""
    table = tokens_to_recover(part)
    if table is None:
        return ""
    return ("\n**Tokens to recover** (held-out PPL on recover.eval_data every recover.eval_every "
            "tokens; target per ratio and pruning = the highest final PPL among its recovery "
            "methods, so every method reaches it; tokens = the first logged point at or below "
            "it).\n\n" + table.to_markdown(index=False) + "\n")

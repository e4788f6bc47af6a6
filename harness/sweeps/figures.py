"""The report's figures, drawn from the results table (matplotlib, no display needed).

- PPL vs pruned fraction, depth vs width, one line per criterion (no recovery);
- zero-shot accuracy vs decode speedup over the dense model, with the Pareto front;
- recovery method vs pruned fraction.
Each function returns the PNG it wrote, or None when the table lacks the columns it needs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

STYLE = {"depth": "-o", "width": "--s", "none": ":^"}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fraction(table: pd.DataFrame) -> pd.Series:
    return 100 * table.get("prune/ratio_achieved", pd.Series(0.0, index=table.index)).fillna(0.0)


def ppl_vs_fraction(table: pd.DataFrame, path: Path, source: str = "wiki_test") -> Path | None:
    col = f"ppl/{source}"
    rows = table[table.get("recover.name", "none").fillna("none") == "none"]
    if col not in rows or rows["prune.name"].isin(["depth", "width"]).sum() == 0:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # one colour per criterion, up to 20
    rows = rows.assign(model=rows["model"] if "model" in rows else "")
    dense, several = rows[rows["prune.name"] == "none"], rows["model"].nunique() > 1
    for (model, method, criterion), part in rows[rows["prune.name"] != "none"].groupby(
        ["model", "prune.name", "prune.criterion"]
    ):  # one line per model and criterion, from that model's dense point
        base = dense[dense["model"] == model]
        part = part.assign(x=_fraction(part)).sort_values("x")
        x = [0.0, *part["x"]] if len(base) else list(part["x"])
        y = [base[col].iloc[0], *part[col]] if len(base) else list(part[col])
        ax.plot(x, y, STYLE.get(method, "-"),
                label=f"{method} {criterion}" + (f" ({model})" if several else ""))
    ax.set(xlabel="parameters removed (% of total)", ylabel=f"PPL {source}", yscale="log",
           title=f"PPL vs pruned fraction (no recovery), {source}")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def accuracy_vs_speedup(table: pd.DataFrame, path: Path) -> Path | None:
    speed = [c for c in table.columns if c.endswith("/bs1/out128/decode_ms")]
    if "zeroshot/mean" not in table or not speed:
        return None
    col = speed[0]
    dense = table[table["prune.name"] == "none"][col]
    if dense.empty:
        return None
    data = table.assign(speedup=dense.iloc[0] / table[col]).dropna(subset=["speedup"])
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method, part in data.groupby("prune.name"):
        ax.scatter(part["speedup"], part["zeroshot/mean"], label="dense" if method == "none"
                   else method)
    front, best = [], -1.0
    by_speed = data.sort_values(["speedup", "zeroshot/mean"], ascending=False)
    for _, r in by_speed.iterrows():  # fastest first; keep each point more accurate than all faster
        if r["zeroshot/mean"] > best:
            front.append((r["speedup"], r["zeroshot/mean"]))
            best = r["zeroshot/mean"]
    ax.plot(*zip(*sorted(front), strict=True), "k--o", lw=1, mfc="none", label="Pareto front")
    ax.set(xlabel=f"decode speedup vs dense ({col.split('/')[1]} backend, batch 1)",
           ylabel="zero-shot mean (%)", title="Accuracy vs speed")
    ax.legend(fontsize=8)
    return _save(fig, path)


def recovery_vs_fraction(table: pd.DataFrame, path: Path, source: str = "wiki_test") -> Path | None:
    col = f"ppl/{source}"
    if col not in table or table.get("recover.name", pd.Series()).nunique() < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    pruned = table[table["prune.name"] != "none"].assign(x=_fraction)
    for (method, recover), part in pruned.groupby(["prune.name", "recover.name"]):
        part = part.sort_values("x")
        ax.plot(part["x"], part[col], STYLE.get(method, "-"), label=f"{method} + {recover}")
    ax.set(xlabel="parameters removed (% of total)", ylabel=f"PPL {source}", yscale="log",
           title="Recovery method vs pruned fraction")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def experiment_figures(table: pd.DataFrame, prefix: Path) -> list[Path]:
    """Every figure the table supports, as `<prefix>_<name>.png`."""
    made = [
        ppl_vs_fraction(table, prefix.with_name(prefix.name + "_ppl_vs_fraction.png")),
        accuracy_vs_speedup(table, prefix.with_name(prefix.name + "_accuracy_vs_speedup.png")),
        recovery_vs_fraction(table, prefix.with_name(prefix.name + "_recovery.png")),
    ]
    return [p for p in made if p is not None]

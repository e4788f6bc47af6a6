"""The report's figures, drawn from the results table (matplotlib, no display needed).

- PPL vs pruned fraction, depth vs width, one line per criterion (no recovery);
- zero-shot accuracy vs decode speedup over the dense model, each point labelled, with the
  Pareto front;
- recovery method vs pruned fraction;
- hybrid pruning (issue 26): PPL vs depth share, one figure per size, a line per recovery (and
  per order), and PPL vs decode speedup over every point, with the Pareto front (lower PPL,
  higher speed), the speed measured in HF and, where the rows have it, in llama.cpp.
Each is written as PNG and as vector PDF and SVG (text kept as text) next to it, in the
Okabe-Ito colour-blind-safe palette, legends outside the axes. Error bars: PPL points show the
std across calibration seeds where a setting ran with several, else the bootstrap std over the
evaluation windows (`ppl/<source>/boot_std`); accuracy points show the standard error of the
mean of the tasks from lm-eval's per-task stderr (sqrt(sum stderr^2) / tasks, raw acc's).
Each function returns the PNG it wrote, or None when the table lacks the columns it needs.
"""

from __future__ import annotations

import logging
from itertools import cycle
from pathlib import Path

import matplotlib

from harness.reporting.differ import differing, label_of, recovery_note

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design": distinguishable under every common colour
# vision deficiency; black last. Beyond eight lines, markers and dashes tell them apart.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442",
             "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINES = {"depth": "-", "width": "--", "none": ":"}
VECTOR = (".pdf", ".svg")
plt.rcParams.update({"svg.fonttype": "none", "pdf.fonttype": 42, "font.size": 9})
logging.getLogger("fontTools").setLevel(logging.WARNING)  # its font-subsetting INFO lines


def _save(fig, path: Path) -> Path:
    """PNG at `path`, PDF and SVG beside it; the legend outside the axes is kept in the box."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for out in (path, *(path.with_suffix(s) for s in VECTOR)):
        fig.savefig(out, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def vector_files(png: Path) -> list[Path]:
    return [png.with_suffix(s) for s in VECTOR if png.with_suffix(s).exists()]


def _legend_outside(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False,
              fontsize=8)


def _styles():
    return cycle(zip(OKABE_ITO, MARKERS, strict=True))


def _fraction(table: pd.DataFrame) -> pd.Series:
    return 100 * table.get("prune/ratio_achieved", pd.Series(0.0, index=table.index)).fillna(0.0)


def _points(part: pd.DataFrame, col: str) -> pd.DataFrame:
    """x, y and its error per pruned fraction: mean and sample std across seeds when there are
    several rows at one x, else the row's bootstrap std (NaN when it has none)."""
    boot = f"{col}/boot_std"
    part = part.assign(x=_fraction(part).round(1),
                       boot=part[boot] if boot in part else np.nan)
    rows = []
    for x, at in part.groupby("x"):
        y = at[col].dropna()
        if y.empty:
            continue
        err = y.std(ddof=1) if len(y) > 1 else at["boot"].iloc[0]
        rows.append({"x": x, "y": y.mean(), "err": err, "n": len(y)})
    return pd.DataFrame(rows, columns=["x", "y", "err", "n"])


def _errorbar(ax, pts: pd.DataFrame, fmt: str, color: str, marker: str, label: str, gid: str):
    err = pts["err"].fillna(0.0).to_numpy() if pts["err"].notna().any() else None
    bars = ax.errorbar(pts["x"], pts["y"], yerr=err, fmt=fmt, marker=marker, color=color,
                       label=label, capsize=3, ms=5, lw=1.4)
    if err is not None:
        for lines in bars.lines[2]:
            lines.set_gid(f"errorbar-{gid}")
    return bars


def ppl_vs_fraction(table: pd.DataFrame, path: Path, source: str = "wiki_test") -> Path | None:
    col = f"ppl/{source}"
    rows = table[table.get("recover.name", "none").fillna("none") == "none"]
    if col not in rows or rows["prune.name"].isin(["depth", "width"]).sum() == 0:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    rows = rows.assign(model=rows["model"] if "model" in rows else "")
    dense, several = rows[rows["prune.name"] == "none"], rows["model"].nunique() > 1
    styles = _styles()
    for (model, method, criterion), part in rows[rows["prune.name"] != "none"].groupby(
        ["model", "prune.name", "prune.criterion"]
    ):  # one line per model and criterion, from that model's dense point
        base = dense[dense["model"] == model]
        pts = _points(pd.concat([base.head(1), part]) if len(base) else part, col)
        color, marker = next(styles)
        label = f"{method} {criterion}" + (f" ({model})" if several else "")
        _errorbar(ax, pts, LINES.get(method, "-"), color, marker, label,
                  f"{model}-{method}-{criterion}" if several else f"{method}-{criterion}")
    ax.set(xlabel="parameters removed (% of total)", ylabel=f"PPL {source}", yscale="log",
           title=f"PPL vs pruned fraction (no recovery), {source}")
    _legend_outside(ax)
    return _save(fig, path)


def zeroshot_sem(table: pd.DataFrame) -> pd.Series:
    """Standard error of the zero-shot mean from lm-eval's per-task stderr (in %):
    sqrt(sum of squares) / number of tasks (tasks independent); NaN without stderr columns."""
    from harness.evaluation.config import MEAN_TASKS

    cols = [f"zeroshot/{t}/acc_stderr" for t in MEAN_TASKS if f"zeroshot/{t}/acc_stderr" in table]
    if not cols:
        return pd.Series(np.nan, index=table.index)
    return np.sqrt((table[cols] ** 2).sum(axis=1, min_count=len(cols))) / len(cols)


def point_label(row: pd.Series) -> str:
    """'dense', 'depth ppl 20% +lora', ..."""
    if row.get("prune.name", "none") == "none":
        return "dense"
    label = f"{row['prune.name']} {row.get('prune.criterion', '')}".strip()
    label += f" {100 * row.get('prune/ratio_achieved', 0):.0f}%"
    recover = row.get("recover.name", "none")
    return label + (f" +{recover}" if isinstance(recover, str) and recover != "none" else "")


def _label_points(ax, data: pd.DataFrame) -> None:
    """Each point's label beside it; a label whose point sits close to the previous one (in
    speed order) goes below its point instead of above, so neighbours do not overprint."""
    prev, below = None, False
    for _, r in data.sort_values("speedup").iterrows():
        x, y = r["speedup"], r["zeroshot/mean"]
        near = prev is not None and abs(x - prev[0]) < 0.05 and abs(y - prev[1]) < 1.5
        below = near and not below
        ax.annotate(point_label(r), (x, y), fontsize=6, xytext=(4, -9 if below else 3),
                    textcoords="offset points", color="#333333")
        prev = (x, y)


def accuracy_vs_speedup(table: pd.DataFrame, path: Path) -> Path | None:
    speed = [c for c in table.columns if c.endswith("/bs1/out128/decode_ms")]
    if "zeroshot/mean" not in table or not speed:
        return None
    col = speed[0]
    dense = table[table["prune.name"] == "none"][col]
    if dense.empty:
        return None
    data = table.assign(speedup=dense.iloc[0] / table[col], sem=zeroshot_sem(table))
    data = data.dropna(subset=["speedup"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    styles = _styles()
    for method, part in data.groupby("prune.name"):
        color, marker = next(styles)
        err = part["sem"].to_numpy() if part["sem"].notna().any() else None
        bars = ax.errorbar(part["speedup"], part["zeroshot/mean"], yerr=err, fmt=marker,
                           color=color, capsize=3, ms=5,
                           label="dense" if method == "none" else method)
        if err is not None:
            for lines in bars.lines[2]:
                lines.set_gid(f"errorbar-{method}")
    _label_points(ax, data)
    front, best = [], -1.0
    by_speed = data.sort_values(["speedup", "zeroshot/mean"], ascending=False)
    for _, r in by_speed.iterrows():  # fastest first; keep each point more accurate than all faster
        if r["zeroshot/mean"] > best:
            front.append((r["speedup"], r["zeroshot/mean"]))
            best = r["zeroshot/mean"]
    ax.plot(*zip(*sorted(front), strict=True), color="#000000", ls=":", lw=1,
            label="Pareto front")
    ax.set(xlabel=f"decode speedup vs dense ({col.split('/')[1]} backend, batch 1)",
           ylabel="zero-shot mean (%)", title="Accuracy vs speed")
    _legend_outside(ax)
    return _save(fig, path)


def recovery_vs_fraction(table: pd.DataFrame, path: Path, source: str = "wiki_test") -> Path | None:
    col = f"ppl/{source}"
    if col not in table or table.get("recover.name", pd.Series()).nunique() < 2:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    styles = _styles()
    pruned = table[table["prune.name"] != "none"]
    criterion = pruned.get("prune.criterion", pd.Series("", index=pruned.index))  # hybrid: none
    pruned = pruned.assign(**{"prune.criterion": criterion.fillna("")})
    extra = differing(pruned)  # one line per (method, criterion, recovery) and differing key
    for values, part in pruned.groupby(["prune.name", "prune.criterion", "recover.name", *extra],
                                       dropna=False):
        method, criterion, recover = values[:3]
        color, marker = next(styles)
        _errorbar(ax, _points(part, col), LINES.get(method, "-"), color, marker,
                  f"{method} {criterion} + {recover}{label_of(extra, tuple(values[3:]))}",
                  f"{method}-{criterion}-{recover}")
    ax.set(xlabel="parameters removed (% of total)", ylabel=f"PPL {source}", yscale="log")
    models = "/".join(str(m) for m in table["model"].dropna().unique()) if "model" in table else ""
    ax.set_title(f"Recovery method vs pruned fraction\n{models}; {recovery_note(table)}",
                 fontsize=6, wrap=True)
    _legend_outside(ax)
    return _save(fig, path)


def ppl_vs_share(table: pd.DataFrame, prefix: Path, source: str = "wiki_test") -> list[Path]:
    """Hybrid rows: for each requested size `<prefix>_ppl_vs_share_<pct>.png`, PPL against the
    depth share (0 = width only, 1 = depth only), a line per recovery (and per `prune.order`,
    dashed for width_first, sharing the edge shares); dense dotted."""
    col = f"ppl/{source}"
    if col not in table or "prune.depth_share" not in table:
        return []
    rows = table[(table["prune.name"] == "hybrid") & table[col].notna()]
    dense = table[(table["prune.name"] == "none") & table[col].notna()] if col in table else None
    out = []
    for ratio, part in rows.groupby("prune.ratio"):
        fig, ax = plt.subplots(figsize=(5.0, 3.4))
        styles = _styles()
        recover = part.get("recover.name", pd.Series("none", index=part.index)).fillna("none")
        order = part.get("prune.order", pd.Series("depth_first", index=part.index))
        order = order.fillna("depth_first")
        edge = part["prune.depth_share"].isin([0, 1])  # shares 0 and 1 have no order
        orders = sorted(order[~edge].unique()) or ["depth_first"]
        for name in sorted(recover.unique(), key=lambda r: (r != "none", r)):
            for o in orders:
                at = part[(recover == name) & (edge | (order == o))]
                pts = at.groupby("prune.depth_share")[col].mean().sort_index()
                color, marker = next(styles)
                tag = f", {o.replace('_', ' ')}" if len(orders) > 1 else ""
                ax.plot(pts.index, pts.to_numpy(), marker=marker, color=color, lw=1.4, ms=5,
                        ls="--" if o == "width_first" else "-", label=f"recovery: {name}{tag}",
                        gid=f"share-{name}-{o}")
        if dense is not None and not dense.empty:
            ax.axhline(dense[col].iloc[0], color="#000000", ls=":", lw=1, label="dense")
        ax.set(xlabel="depth share of the removed parameters (0 = width, 1 = depth)",
               ylabel=f"PPL {source}", yscale="log",
               title=f"Depth/width mix at {100 * ratio:.0f}% of total parameters")
        _legend_outside(ax)
        out.append(_save(fig, prefix.with_name(f"{prefix.name}_ppl_vs_share_{100 * ratio:.0f}.png")))
    return out


def _speedups(table: pd.DataFrame, engine: str = "hf") -> pd.Series:
    """Batch-1 decode speedup of each row over its model's dense row: `hf`, from the first decode
    column the two share; `llamacpp`, from llama.cpp's batch-1 decode tokens/s. Every row takes
    the median over the rows with the same pruned model (recovery merges into the same shapes,
    a hybrid's `prune.order` never changes the shape, and repeated speed runs are pooled)."""
    if engine == "llamacpp":
        cols, faster = [c for c in ("engine/speed/b1/decode_tok_s",) if c in table], True
    else:
        cols, faster = [c for c in table.columns if c.startswith("speed/") and "/bs1/" in c
                        and c.endswith("/decode_ms")], False
    model = table["model"] if "model" in table else pd.Series("", index=table.index)
    speed = pd.Series(np.nan, index=table.index)
    for c in cols:
        dense = table[(table["prune.name"] == "none") & table[c].notna()]
        for m, at in table[speed.isna() & table[c].notna()].groupby(model):
            base = dense[model.loc[dense.index] == m][c].astype(float)
            if not base.empty:
                ours = at[c].astype(float)
                speed.loc[at.index] = ours / base.median() if faster else base.median() / ours
    shape = [c for c in table.columns if c.startswith("prune.") and c != "prune.order"]
    shape = [c for c in shape + ["model"] if c in table]
    keys = table[shape].apply(lambda r: "|".join(map(str, r)), axis=1)
    return speed.groupby(keys).transform("median")  # a shape measured twice: the median


def pareto_front(data: pd.DataFrame, col: str) -> list[tuple[float, float]]:
    """(speedup, PPL) of the points no other point beats on both (faster and lower PPL),
    slowest first."""
    front, best = [], np.inf
    for _, r in data.sort_values(["speedup", col], ascending=[False, True]).iterrows():
        if r[col] < best:  # fastest first; keep each point better than every faster one
            front.append((float(r["speedup"]), float(r[col])))
            best = r[col]
    return sorted(front)


def ppl_vs_speedup(table: pd.DataFrame, path: Path, source: str = "wiki_test",
                   engine: str = "hf") -> Path | None:
    """Every row with a PPL and a speed: PPL against decode speedup (measured in HF, or in
    llama.cpp with `engine="llamacpp"`), the Pareto front (points no other point beats on
    both), colours by method, filled without recovery."""
    col = f"ppl/{source}"
    if col not in table or "prune.name" not in table:
        return None
    data = table.assign(speedup=_speedups(table, engine)).dropna(subset=["speedup", col])
    if data.empty or (data["prune.name"] != "none").sum() == 0:
        return None
    fig, ax = plt.subplots(figsize=(5.8, 3.8))
    recover = data.get("recover.name", pd.Series("none", index=data.index)).fillna("none")
    method = data["prune.name"].where(data["prune.name"] != "hybrid",
                                      "hybrid share " + data.get("prune.depth_share",
                                                                 pd.Series("", index=data.index))
                                      .astype(str))
    # colour = pruning method (or depth share), marker = recovery (filled: none)
    order = sorted(method.unique(), key=lambda m: (m != "none", m.startswith("hybrid"), m))
    palette = cycle([c for c in OKABE_ITO if c != "#000000"])
    colors = {m: "#000000" if m == "none" else next(palette) for m in order}
    markers = dict(zip(sorted(recover.unique(), key=lambda r: (r != "none", r)), cycle(MARKERS),
                       strict=False))
    for (m, r), part in data.groupby([method, recover]):
        ax.scatter(part["speedup"], part[col], color=colors[m], marker=markers[r], s=24,
                   facecolors=colors[m] if r == "none" else "none")
    for m, c in colors.items():
        ax.scatter([], [], color=c, marker="o", s=24, label="dense" if m == "none" else m)
    for r, mk in markers.items():
        ax.scatter([], [], color="#555555", marker=mk, s=24,
                   facecolors="#555555" if r == "none" else "none",
                   label="no recovery" if r == "none" else f"+{r}")
    ax.plot(*zip(*pareto_front(data, col), strict=True), color="#000000", ls=":", lw=1,
            label="Pareto front")
    ax.set(xlabel=f"decode speedup vs dense (batch 1, {_engine_note(data, engine)})",
           ylabel=f"PPL {source}", yscale="log", title="Quality vs measured speed")
    _legend_outside(ax)
    return _save(fig, path)


def _engine_note(data: pd.DataFrame, engine: str) -> str:
    """'HF', or 'llama.cpp f32, 2 threads' (the weight type and threads the rows state)."""
    if engine != "llamacpp":
        return "HF"

    def one(col: str) -> str:
        values = data[col].dropna().unique() if col in data else []
        return f"{values[0]:g}" if len(values) == 1 and not isinstance(values[0], str) else \
            (str(values[0]) if len(values) == 1 else "")

    dtype, threads = one("engine/speed/dtype"), one("engine/speed/threads")
    return f"llama.cpp {dtype}".strip() + (f", {threads} threads" if threads else "")


def experiment_figures(table: pd.DataFrame, prefix: Path) -> list[Path]:
    """Every figure the table supports: the PNGs `<prefix>_<name>.png` (each with its PDF and
    SVG beside it, see `vector_files`)."""
    made = [
        ppl_vs_fraction(table, prefix.with_name(prefix.name + "_ppl_vs_fraction.png")),
        accuracy_vs_speedup(table, prefix.with_name(prefix.name + "_accuracy_vs_speedup.png")),
        recovery_vs_fraction(table, prefix.with_name(prefix.name + "_recovery.png")),
        *ppl_vs_share(table, prefix),
    ]
    if "prune.depth_share" in table:
        made.append(ppl_vs_speedup(table, prefix.with_name(prefix.name + "_ppl_vs_speedup.png")))
        made.append(ppl_vs_speedup(table, prefix.with_name(prefix.name + "_ppl_vs_speedup_llamacpp.png"),
                                   engine="llamacpp"))
    return [p for p in made if p is not None]

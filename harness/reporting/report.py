"""`harness report`: the results table as paper-layout tables and figures.

`harness report` prints the table grouped by experiment. `harness report --write` also writes,
for each experiment, `results/<experiment>.{md,tex,csv}` (one row per run, the layout of the
LLM-Pruner / Shortened LLaMA tables, with the protocol, metric convention and zero-shot limit in
the caption) and its figures (`results/<experiment>_*.png`), plus `results/matched_size.*`: every
depth and width criterion side by side at each size, whichever experiments ran them. `--wandb`
logs the same summary. A sweep of a named experiment ends with its own part of this report.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import pandas as pd

from harness.config import NAME
from harness.data import protocol
from harness.data.protocol import EVAL_SEQ_LEN
from harness.io import write_text_atomic
from harness.reporting.captions import caption, regenerate_commands
from harness.reporting.differ import differing
from harness.reporting.differ import short as key_name
from harness.reporting.seeds import has_repeats, mean_std, seed_groups
from harness.tracking.results import by_experiment, read_table

PROTOCOL_SEED = protocol.CALIB_SEED  # the calibration every other table uses
KEY_COLUMNS = ["experiment", "model", "prune.name", "prune.criterion", "prune.unit",
               "prune.ratio", "recover.name", "recover.tokens"]
# In `<experiment>.md`, everything from this line on is a person's reading: rewrites keep it.
READING_MARKER = "<!-- reading: kept when harness report rewrites this file -->"
HEADLINE = ("params/total", "prune/ratio_achieved", "zeroshot/mean")
TASK_NAMES = {"boolq": "BoolQ", "piqa": "PIQA", "hellaswag": "HellaS", "winogrande": "WinoG",
              "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "openbookqa": "OBQA"}


def plain_name(name: str) -> bool:
    return bool(NAME.match(str(name))) and ".." not in str(name)


def metric_columns(table: pd.DataFrame) -> list[str]:
    """Perplexity of every evaluated source, then the other headline metrics present."""
    ppl = [c for c in table.columns
           if c.startswith("ppl/") and not c.endswith(("/tokens", "/predicted", "/boot_std",
                                                       "/boot_lo", "/boot_hi"))]
    return ppl + [c for c in HEADLINE if c in table.columns]


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Readable view: config columns that exist, then the headline metrics, sorted."""
    if table.empty:
        return table
    keys = [c for c in KEY_COLUMNS if c in table.columns]
    view = table[keys + metric_columns(table)].copy()
    return view.sort_values(keys, na_position="first").reset_index(drop=True)


def print_table(results_dir: str) -> None:
    view = summary(read_table(results_dir))
    if view.empty:
        print(f"no results in {results_dir}")
        return
    with pd.option_context("display.max_columns", None, "display.width", 200,
                           "display.float_format", "{:.4g}".format):
        for experiment, part in by_experiment(view):
            print(f"\n== {experiment} ({len(part)} runs) ==")
            print(part.drop(columns="experiment").dropna(axis=1, how="all").to_string(index=False))


def method_label(row: pd.Series) -> str:
    """'Dense', 'Depth ppl', 'Depth taylor (attn)', 'Width flap', ..."""
    name = row.get("prune.name", "none")
    if name == "none" or pd.isna(name):
        return "Dense"
    if name == "hybrid":  # depth then width: both criteria and the depth share
        share = row.get("prune.depth_share")
        order = ", width first" if row.get("prune.order") == "width_first" and 0 < share < 1 else ""
        return (f"Hybrid {row.get('prune.depth_criterion')}+{row.get('prune.width_criterion')}, "
                f"depth share {share:g}{order}")
    label = f"{name.capitalize()} {row.get('prune.criterion', '')}".strip()
    unit = row.get("prune.unit")
    label = f"{label} ({unit})" if isinstance(unit, str) and unit != "block" else label
    return label + width_variant(row)


def width_variant(row: pd.Series) -> str:
    """' (LLM-Pruner fold)' for gqa_fold=llm_pruner rows (our width rows are aligned unless
    marked), ' (MLP: taylor)' for a criterion scoring only attention, e.g. loss."""
    out = ""
    if row.get("prune.gqa_fold") == "llm_pruner":
        out += " (LLM-Pruner fold)"
    mlp = row.get("prune.mlp_criterion")
    if isinstance(mlp, str) or row.get("prune.criterion") == "loss":
        out += f" (MLP: {mlp if isinstance(mlp, str) else 'taylor'})"
    return out


def paper_table(part: pd.DataFrame) -> pd.DataFrame:
    """One experiment's rows in paper layout: method, size, PPL, zero-shot, speed."""
    out = pd.DataFrame({"Method": part.apply(method_label, axis=1)})
    out["Recovery"] = part.get("recover.name", pd.Series("none", index=part.index)).fillna("none")
    pruned = part.get("prune/ratio_achieved", pd.Series(0.0, index=part.index))  # dense: 0
    out["Pruned %"] = (100 * pruned.fillna(0.0)).round(1)
    out["Params (M)"] = (part["params/total"] / 1e6).round(1)
    if "prune/depth_share_achieved" in part:  # hybrid rows: the split as cut
        out["Depth share (achieved)"] = part["prune/depth_share_achieved"].round(3)
    for col in [c for c in metric_columns(part) if c.startswith("ppl/")]:
        out[f"PPL {col.removeprefix('ppl/')}"] = part[col].round(2)
    for col in [c for c in part.columns if c.startswith("engine/ppl/") and c.count("/") == 2]:
        source = col.removeprefix("engine/ppl/")  # the same windows, llama.cpp's logits
        out[f"PPL {source} (llama.cpp)"] = part[col].round(2)
        if f"ppl/{source}" in part:
            out[f"engine diff % {source}"] = (100 * (part[col] / part[f"ppl/{source}"] - 1)).round(4)
    for task, short in TASK_NAMES.items():
        if f"zeroshot/{task}" in part:
            out[short] = part[f"zeroshot/{task}"].round(1)
    if "zeroshot/mean" in part:
        out["Mean"] = part["zeroshot/mean"].round(1)
    speed = [c for c in part.columns if c.endswith("/bs1/out128/decode_ms")]
    for col in speed:
        out[f"decode ms ({col.split('/')[1]}, bs1)"] = part[col].round(2)
    for col in differing(part):  # every key that differs between rows, never hidden
        out[key_name(col)] = part[col]
    order = ["Pruned %", "Method", "Recovery"]
    out = out.dropna(axis=1, how="all").sort_values(order)
    if has_repeats(part):  # one row per setting: mean ± std over calibration seeds, and n
        return mean_std(out, seed_groups(part).loc[out.index])
    return out.reset_index(drop=True)


def convention_table(part: pd.DataFrame) -> pd.DataFrame | None:
    """Zero-shot accuracy of each run under both papers' metric conventions (from raw acc and
    acc_norm), so a table can be compared with LLM-Pruner's and with Shortened LLaMA's."""
    from harness.evaluation.config import CONVENTIONS

    if "zeroshot/hellaswag/acc_norm" not in part:
        return None
    part = part[part["zeroshot/hellaswag/acc_norm"].notna()]
    if part.empty:
        return None
    rows = []
    for (_, run), convention in itertools.product(part.iterrows(), CONVENTIONS):
        row = {"Method": method_label(run), "Recovery": run.get("recover.name", "none"),
               "Convention": convention}
        for task, metric in CONVENTIONS[convention].items():
            row[TASK_NAMES[task]] = round(run.get(f"zeroshot/{task}/{metric}", float("nan")), 1)
        row["Mean"] = round(sum(row[TASK_NAMES[t]] for t in CONVENTIONS[convention]) / 7, 1)
        if "zeroshot/lambada_openai" in run:
            row["LAMBADA acc"] = round(run["zeroshot/lambada_openai"], 1)
        rows.append(row)
    return pd.DataFrame(rows)


def matched_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Pruned runs comparable across experiments: depth or width by `prune.ratio`, no recovery,
    whole blocks, real weights, PPL at the protocol's seq_len, the protocol's calibration seed."""
    def col(name, default):
        return table[name] if name in table else pd.Series(default, index=table.index)

    if table.empty or "prune.ratio" not in table:
        return table.iloc[:0]
    keep = (col("prune.name", "none").isin(["depth", "width"]) & table["prune.ratio"].notna()
            & (col("recover.name", "none").fillna("none") == "none")
            & (col("prune.unit", "block").fillna("block") == "block")
            & ~col("model/shape_only", False).fillna(False).astype(bool)
            & (col("eval.seq_len", EVAL_SEQ_LEN).fillna(EVAL_SEQ_LEN) == EVAL_SEQ_LEN)
            & col("data.calib_seed", PROTOCOL_SEED).fillna(PROTOCOL_SEED).eq(PROTOCOL_SEED))
    return table[keep]


def matched_size_table(table: pd.DataFrame) -> pd.DataFrame | None:
    """Depth and width side by side at each requested size, whatever experiment ran them: one
    row per model, method and criterion; per requested ratio, the achieved % of total
    parameters removed and the PPL of each evaluated source."""
    rows = matched_rows(table)
    if rows.empty:
        return None
    sources = [c for c in metric_columns(rows) if c.startswith("ppl/")]
    entries = []
    for (model, method, criterion), part in rows.groupby(["model", "prune.name",
                                                          "prune.criterion"]):
        entry = {"Model": model, "Method": f"{method.capitalize()} {criterion}"}
        for ratio, at in part.groupby("prune.ratio"):
            tag = f"{100 * ratio:g}%"
            entry[f"{tag} achieved"] = round(100 * at["prune/ratio_achieved"].iloc[0], 1)
            for src in sources:
                values = at[src].dropna()
                if len(values):
                    entry[f"{tag} {src.removeprefix('ppl/')}"] = float(f"{values.iloc[0]:.4g}")
        entries.append(entry)
    return pd.DataFrame(entries)


def write_report(results_dir: str | Path, out_dir: str | Path | None = None,
                 only: str | None = None) -> list[Path]:
    """Write tables and figures of every experiment in the results table (or `only` one);
    returns the files."""
    from harness.reporting.curves import curve_figures, curves_markdown
    from harness.reporting.figures import experiment_figures, vector_files

    table = read_table(results_dir)
    out = Path(out_dir or results_dir)
    written = []
    for experiment, part in by_experiment(table):
        if only is not None and experiment != only:
            continue
        if not plain_name(experiment):  # names files: never a path out of `out`
            print(f"warning: skipped experiment {experiment!r} of {results_dir}/results.csv: not "
                  "a plain name (letters, digits, _ . + -)", file=sys.stderr)
            continue
        paper, cap = paper_table(part), caption(part, experiment)
        md = f"**{experiment}.** {cap}\n\n{paper.to_markdown(index=False)}\n"
        md += curves_markdown(part)  # recovery runs with a held-out curve (eval_every)
        md += kept_reading(out / f"{experiment}.md")
        tex = paper.to_latex(index=False, caption=cap.replace("_", r"\_"),
                             label=f"tab:{experiment}", float_format="%.2f")
        for suffix, text in ((".md", md), (".tex", tex), (".csv", paper.to_csv(index=False))):
            written.append(write_text_atomic(out / f"{experiment}{suffix}", text))
        conventions = convention_table(part)
        if conventions is not None:
            text = f"**{experiment}, both metric conventions.** {cap}\n\n" \
                f"{conventions.to_markdown(index=False)}\n"
            written.append(write_text_atomic(out / f"{experiment}_conventions.md", text))
        written += [f for png in [*experiment_figures(part, out / experiment),
                                  *curve_figures(part, out / experiment)]
                    for f in (png, *vector_files(png))]
    if only is None:
        written += _write_matched_size(table, out)
        from harness.reporting.figures import ppl_vs_speedup  # every experiment's points

        for engine, name in (("hf", "pareto_ppl_vs_speedup.png"),
                             ("llamacpp", "pareto_ppl_vs_speedup_llamacpp.png")):
            png = ppl_vs_speedup(table, out / name, engine=engine)
            written += [png, *vector_files(png)] if png else []
    return written


def kept_reading(path: Path) -> str:
    """The hand-written reading of an existing report file (from READING_MARKER on), or ''."""
    text = path.read_text() if path.is_file() else ""
    return "\n" + text[text.index(READING_MARKER):] if READING_MARKER in text else ""


def _write_matched_size(table: pd.DataFrame, out: Path) -> list[Path]:
    """`matched_size.{md,csv}` and its PPL-vs-size figures (dense at 0 when the table has it)."""
    from harness.reporting.figures import ppl_vs_fraction, vector_files

    matched = matched_size_table(table)
    if matched is None:
        return []
    keys = set(matched_rows(table)["run_key"])
    commands = ", ".join(f"`{c}`" for experiment, part in by_experiment(table)
                         if part["run_key"].isin(keys).any()
                         for c in regenerate_commands(part, experiment))
    text = ("**Depth vs width at matched size, every criterion, no recovery** (rows from all "
            "experiments; sizes are fractions of TOTAL parameters, requested and achieved; PPL "
            f"at seq_len {EVAL_SEQ_LEN}, fp32). Regenerate: {commands}, then `harness report --write`.\n\n"
            f"{matched.to_markdown(index=False)}\n")
    written = [write_text_atomic(out / "matched_size.md", text),
               write_text_atomic(out / "matched_size.csv", matched.to_csv(index=False))]
    dense = table[(table.get("prune.name") == "none")]
    for source in ("wiki_test", "c4_test"):
        col = f"ppl/{source}"
        base = dense[dense[col].notna()] if col in dense else dense.iloc[:0]
        base = base.drop_duplicates("model") if "model" in base else base.head(1)  # one a model
        fig = ppl_vs_fraction(pd.concat([base, matched_rows(table)]),
                              out / f"matched_size_ppl_vs_fraction_{source}.png", source)
        written += [fig, *vector_files(fig)] if fig else []
    return written


def experiment_report(results_dir: str | Path, experiment: str) -> list[Path]:
    """End of a sweep: print the experiment's paper table (e.g. depth vs width for `quick`)
    and write its tables and figures next to the results table."""
    part = dict(by_experiment(read_table(results_dir))).get(experiment, pd.DataFrame())
    if part.empty:
        print(f"no results for experiment {experiment} in {results_dir}")
        return []
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(f"\n== {experiment} ({len(part)} runs) ==\n{caption(part, experiment)}\n")
        print(paper_table(part).to_string(index=False))
    files = write_report(results_dir, only=experiment)
    print("\nwrote " + ", ".join(str(f) for f in files))
    return files


def log_to_wandb(results_dir: str | Path, figures: list[Path]) -> None:
    """The summary table and figures as one W&B run (offline unless the user is online)."""
    from harness.tracking.wandb_logger import LoggerConfig, WandbRun

    run = WandbRun(LoggerConfig(), {}, group="report", name="report", run_dir=str(results_dir))
    run.log_table("results", summary(read_table(results_dir)))
    run.log_images({p.stem: p for p in figures if p.suffix == ".png"})
    run.finish()


def rekey(results_dir: str | Path) -> dict:
    """Rewrite results.csv with every row's run key and identity columns recomputed (after a
    change to which fields determine results), merging rows that now share a key."""
    from harness.reporting.rows import rekey_table
    from harness.tracking.results import rewrite_table

    counts = {}

    def change(table):
        new, found = rekey_table(table)
        counts.update(found)
        return new

    rewrite_table(results_dir, change)
    print(f"rekeyed {counts['rows']} rows in {results_dir}: {counts['changed']} keys changed, "
          f"{counts['merged']} merged into a row with the same key")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness report", description=__doc__)
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--write", action="store_true", help="write tables and figures")
    parser.add_argument("--only", metavar="EXPERIMENT",
                        help="write the tables and figures of this experiment only")
    parser.add_argument("--wandb", action="store_true", help="log the summary to W&B")
    parser.add_argument("--rekey", action="store_true",
                        help="recompute every row's run_key under the current key schema")
    args = parser.parse_args(argv)
    if args.rekey:
        rekey(args.results_dir)
    print_table(args.results_dir)
    if args.write or args.wandb:
        files = write_report(args.results_dir, only=args.only)
        print("\nwrote " + ", ".join(str(f) for f in files))
        if args.wandb:
            log_to_wandb(args.results_dir, files)
    return 0


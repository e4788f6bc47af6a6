"""`harness report`: the results table, grouped so a sweep reads at a glance."""

from __future__ import annotations

import argparse

import pandas as pd

from harness.tracking.results import read_table

KEY_COLUMNS = ["experiment", "model", "prune.name", "prune.criterion", "prune.ratio",
               "recover.name", "recover.tokens"]
HEADLINE = ("params/total", "prune/ratio_achieved", "zeroshot/mean")


def metric_columns(table: pd.DataFrame) -> list[str]:
    """Perplexity of every evaluated source, then the other headline metrics present."""
    ppl = [c for c in table.columns
           if c.startswith("ppl/") and not c.endswith(("/tokens", "/predicted"))]
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
        for experiment, part in view.groupby("experiment", sort=False):
            print(f"\n== {experiment} ({len(part)} runs) ==")
            print(part.drop(columns="experiment").to_string(index=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness report", description=__doc__)
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args(argv)
    print_table(args.results_dir)
    return 0

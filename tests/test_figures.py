"""Paper figures: vector files next to the PNG, error bars, labelled points, safe colours."""

import re

import pandas as pd

from harness.reporting.figures import (
    OKABE_ITO,
    accuracy_vs_speedup,
    experiment_figures,
    ppl_vs_fraction,
    vector_files,
)

TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def _table():
    rows = [{"prune.name": "none", "recover.name": "none", "ppl/wiki_test": 30.0,
             "ppl/wiki_test/boot_std": 0.5, "zeroshot/mean": 45.0,
             "speed/hf/bs1/out128/decode_ms": 20.0, **{f"zeroshot/{t}/acc_stderr": 5.0
                                                       for t in TASKS}}]
    for method, ppl, ms in (("depth", 60.0, 16.0), ("width", 50.0, 19.0)):
        for seed, shift in ((1, 0.0), (2, 4.0), (3, 8.0)):
            rows.append({"prune.name": method, "prune.criterion": "taylor", "recover.name": "none",
                         "prune/ratio_achieved": 0.2, "data.calib_seed": seed,
                         "ppl/wiki_test": ppl + shift, "ppl/wiki_test/boot_std": 1.0,
                         "zeroshot/mean": 40.0, "speed/hf/bs1/out128/decode_ms": ms,
                         **{f"zeroshot/{t}/acc_stderr": 4.9 for t in TASKS}})
    return pd.DataFrame(rows)


def test_every_figure_has_pdf_and_svg_next_to_its_png(tmp_path):
    files = {f.name for p in experiment_figures(_table(), tmp_path / "demo")
             for f in (p, *vector_files(p))}
    assert {"demo_ppl_vs_fraction.png", "demo_ppl_vs_fraction.pdf", "demo_ppl_vs_fraction.svg",
            "demo_accuracy_vs_speedup.png", "demo_accuracy_vs_speedup.pdf",
            "demo_accuracy_vs_speedup.svg"} <= files
    assert (tmp_path / "demo_ppl_vs_fraction.pdf").read_bytes().startswith(b"%PDF")


def test_ppl_error_bars_are_the_seed_std_and_the_bootstrap_std(tmp_path):
    import matplotlib.pyplot as plt

    captured = {}
    real = plt.Axes.errorbar

    def spy(ax, x, y, yerr=None, **kw):
        captured[kw["label"]] = (list(x), list(y), None if yerr is None else list(yerr))
        return real(ax, x, y, yerr=yerr, **kw)

    plt.Axes.errorbar = spy
    try:
        ppl_vs_fraction(_table(), tmp_path / "ppl.png")
    finally:
        plt.Axes.errorbar = real
    x, y, err = captured["depth taylor"]
    assert x == [0.0, 20.0] and y == [30.0, 64.0]  # dense, then the mean over three seeds
    assert err == [0.5, 4.0]  # dense: bootstrap std over windows; 20%: std of 60, 64, 68
    svg = (tmp_path / "ppl.svg").read_text()
    assert 'id="errorbar-depth-taylor' in svg and 'id="errorbar-width-taylor' in svg


def test_accuracy_points_are_labelled_with_stderr_bars_and_okabe_ito_colours(tmp_path):
    accuracy_vs_speedup(_table(), tmp_path / "acc.png")
    svg = (tmp_path / "acc.svg").read_text()
    assert "depth taylor 20%" in svg and "dense" in svg  # text kept as text in the SVG
    assert 'id="errorbar-depth' in svg
    colours = {c.upper() for c in re.findall(r"stroke: (#[0-9a-fA-F]{6})", svg)}
    assert {OKABE_ITO[0], OKABE_ITO[1]} <= colours

"""Hybrid figures (issue 26): PPL vs depth share per size, PPL vs measured speed with the
Pareto front; recovered rows take the speed of their pruned shape."""

import pandas as pd
import pytest

from harness.reporting.figures import (
    _speedups,
    experiment_figures,
    pareto_front,
    ppl_vs_share,
    ppl_vs_speedup,
    vector_files,
)
from harness.reporting.report import method_label


def _table():
    rows = [{"prune.name": "none", "recover.name": "none", "model": "m", "ppl/wiki_test": 30.0,
             "speed/hf/bs1/out64/decode_ms": 20.0}]
    for ratio in (0.2, 0.35):
        for share, ppl, ms in ((0.0, 50.0, 19.0), (0.5, 45.0, 17.0), (1.0, 60.0, 16.0)):
            base = {"prune.name": "hybrid", "prune.ratio": ratio, "prune.depth_share": share,
                    "prune.depth_criterion": "ppl", "prune.width_criterion": "taylor",
                    "model": "m", "prune/ratio_achieved": ratio}
            rows.append({**base, "recover.name": "none", "ppl/wiki_test": ppl * (1 + ratio),
                         "speed/hf/bs1/out64/decode_ms": ms * (1 - ratio / 2)})
            rows.append({**base, "recover.name": "lora", "ppl/wiki_test": ppl * ratio * 2})
    return pd.DataFrame(rows)


def test_recovered_rows_take_the_speed_of_their_pruned_shape():
    table = _table()
    speed = _speedups(table)
    assert speed.iloc[0] == 1.0 and speed.notna().all()
    none = table["recover.name"] == "none"
    for _, at in table[table["prune.name"] == "hybrid"].groupby(["prune.ratio",
                                                                 "prune.depth_share"]):
        assert speed.loc[at.index].nunique() == 1
    row = table[none & (table["prune.ratio"] == 0.2) & (table["prune.depth_share"] == 1.0)]
    assert speed.loc[row.index[0]] == pytest.approx(20.0 / (16.0 * 0.9))


def test_pareto_front_keeps_exactly_the_undominated_points():
    data = pd.DataFrame({"speedup": [1.0, 1.1, 1.2, 1.3, 1.25], "ppl": [30.0, 40.0, 35.0, 50.0,
                                                                          60.0]})
    assert pareto_front(data, "ppl") == [(1.0, 30.0), (1.2, 35.0), (1.3, 50.0)]


def test_share_figures_one_per_size_and_the_speed_figure(tmp_path):
    table = _table()
    pngs = ppl_vs_share(table, tmp_path / "mix")
    assert [p.name for p in pngs] == ["mix_ppl_vs_share_20.png", "mix_ppl_vs_share_35.png"]
    assert all(len(vector_files(p)) == 2 for p in pngs)
    assert ppl_vs_speedup(table, tmp_path / "front.png").exists()
    names = {p.name for p in experiment_figures(table, tmp_path / "exp")}
    assert {"exp_ppl_vs_share_20.png", "exp_ppl_vs_speedup.png"} <= names
    assert method_label(table.iloc[3]) == "Hybrid ppl+taylor, depth share 0.5"


def test_llamacpp_speedups_are_tokens_per_second_over_dense(tmp_path):
    """llama.cpp's decode tokens/s: higher is faster; recovered rows and width_first rows (the
    same shape as depth_first) take their pruned shape's speed."""
    table = _table()
    table["engine/speed/b1/decode_tok_s"] = [50.0 if n == "none" else None
                                             for n in table["prune.name"]]
    pruned = (table["prune.name"] == "hybrid") & (table["recover.name"] == "none")
    table.loc[pruned, "engine/speed/b1/decode_tok_s"] = 60.0 + 10 * table.loc[pruned,
                                                                              "prune.depth_share"]
    table["prune.order"] = None
    extra = table[pruned & (table["prune.depth_share"] == 0.5)].assign(
        **{"prune.order": "width_first", "engine/speed/b1/decode_tok_s": None,
           "speed/hf/bs1/out64/decode_ms": None, "ppl/wiki_test": 40.0})
    table = pd.concat([table, extra], ignore_index=True)
    speed = _speedups(table, "llamacpp")
    assert speed.iloc[0] == 1.0 and speed.notna().all()
    assert speed.iloc[-1] == pytest.approx(65.0 / 50.0)  # width_first: its shape's speed
    again = table[pruned & (table["prune.depth_share"] == 1.0)].assign(
        **{"engine/speed/b1/decode_tok_s": 90.0})  # a second speed run of one shape
    pooled = _speedups(pd.concat([table, again], ignore_index=True), "llamacpp")
    assert pooled.iloc[-1] == pytest.approx((70.0 + 90.0) / 2 / 50.0)
    lora = table[(table["recover.name"] == "lora") & (table["prune.depth_share"] == 1.0)]
    assert list(speed.loc[lora.index]) == pytest.approx([70.0 / 50.0] * 2)
    png = ppl_vs_speedup(table, tmp_path / "front.png", engine="llamacpp")
    assert png.exists() and "llama.cpp" in vector_files(png)[-1].read_text()
    hf_only = table.drop(columns="engine/speed/b1/decode_tok_s")
    assert ppl_vs_speedup(hf_only, tmp_path / "none.png", engine="llamacpp") is None


def test_share_figure_draws_a_line_per_order(tmp_path):
    table = _table()
    extra = table[(table["prune.depth_share"] == 0.5)].assign(**{"prune.order": "width_first"})
    table = pd.concat([table, extra], ignore_index=True)
    pngs = ppl_vs_share(table, tmp_path / "mix")
    svg = vector_files(pngs[0])[-1].read_text()
    for gid in ("share-none-depth_first", "share-none-width_first", "share-lora-width_first"):
        assert f'id="{gid}' in svg, gid

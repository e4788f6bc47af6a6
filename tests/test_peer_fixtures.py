"""Integration (golden): the harness selects exactly what the peers' own code selected on SmolLM2.

Fixtures (tests/fixtures/peers/, each with the peer commit, command and every adaptation the
offline protocol needed) come from running LLM-Pruner (llama3.py, its GQA entry point) and
shortened-llm in a throwaway environment outside this repository. Here:
- `prune.gqa_fold=llm_pruner` keeps, in every layer 4..27, the peer's KV groups, query heads and
  MLP channels (taylor param_first / param_second / vectorize at 0.33 and 0.63);
- depth Taylor+ (protect 4 first, 2 last) removes the peer's 8 and 13 blocks (and ppl, for
  every shortened_llm_*.json present).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.data.text import calibration_ids
from harness.models.loader import load_model
from harness.pruning import ratio as R
from harness.pruning.depth import DepthPruneConfig, score_blocks, select_blocks
from harness.pruning.importance.width import score_groups
from harness.pruning.width import WidthPruneConfig, select_kept

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).parent / "fixtures" / "peers"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def kept_channels(mask_hex: str) -> list[int]:
    bits = int(mask_hex, 16)
    return [c for c in range(len(mask_hex) * 4) if bits >> c & 1]


@pytest.fixture(scope="module")
def smollm2():
    model, tok = load_model("smollm2_135m")
    return model, calibration_ids(tok)


def llm_pruner_plan(model, calib, fixture: dict, fold: str, cache: dict) -> dict:
    cfg = WidthPruneConfig(criterion=fixture["criterion"], unit_ratio=fixture["unit_ratio"],
                           attn_unit="kv_group", layer_start=4, layer_end=28, gqa_fold=fold)
    key = (cfg.criterion, fold)
    if key not in cache:
        cache[key] = score_groups(model, cfg, calib)
    geo = R.Geometry.from_model(model, cfg.attn_unit)
    return select_kept(geo, cfg, cache[key], R.solve_counts(geo, cfg, 24))


@pytest.mark.parametrize("crit", ["taylor", "taylor2", "vector"])
def test_llm_pruner_fold_selects_the_peers_kept_sets(smollm2, crit):
    model, calib = smollm2
    cache: dict = {}
    for ratio in ("0.33", "0.63"):
        fixture = load(f"llm_pruner_{crit}_{ratio}.json")
        plan = llm_pruner_plan(model, calib, fixture, "llm_pruner", cache)
        for i, peer in fixture["layers"].items():
            ours = plan[int(i)]
            assert ours["kept_kv_heads"] == peer["kept_kv_heads"], (ratio, i)
            assert ours["kept_q_heads"] == peer["kept_q_heads"], (ratio, i)
            assert ours["kept_mlp_channels"] == kept_channels(peer["mlp_kept_mask"]), (ratio, i)


def test_aligned_default_differs_from_the_peer_only_in_kv_groups(smollm2):
    """Our default scores the heads a KV group's removal cuts; LLM-Pruner's fold scores others.
    At its shape (taylor, 0.33) the MLP channels agree everywhere, the KV groups in 14 of 24."""
    model, calib = smollm2
    fixture = load("llm_pruner_taylor_0.33.json")
    plan = llm_pruner_plan(model, calib, fixture, "aligned", {})
    same_kv = sum(plan[int(i)]["kept_kv_heads"] == p["kept_kv_heads"]
                  for i, p in fixture["layers"].items())
    assert same_kv == 14
    for i, peer in fixture["layers"].items():
        assert plan[int(i)]["kept_mlp_channels"] == kept_channels(peer["mlp_kept_mask"])


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("shortened_llm_*.json")))
def test_depth_removes_the_peers_blocks(smollm2, name):
    model, calib = smollm2
    fixture = load(name)
    crit = fixture["criterion"]
    cfg = DepthPruneConfig(criterion=crit, num_blocks=8)
    scores = score_blocks(model, cfg, calib)
    for n, removed in fixture["removed"].items():
        assert select_blocks(scores, int(n), cfg, 30) == removed

"""Hybrid pruning: the edges are exactly the width and depth runs, the size is matched at every
share, the first step's scores are keyed (and reused) independently of the share, and a hybrid
model saves and reloads to the same logits. Tiny Llama, Qwen2 and Gemma 3 random models."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from harness.config import RunSpec
from harness.data.config import DataConfig
from harness.evaluation.config import EvalConfig
from harness.identity import stage_keys
from harness.keys import config_key
from harness.models.loader import ModelConfig, load_hf_config, load_model, save_model
from harness.models.tiny import tiny_model, tiny_tokenizer
from harness.pruning.depth import DepthPruneConfig, prune_depth, total_params, unit_params
from harness.pruning.hybrid import HybridPruneConfig, prune_hybrid, score_hybrid
from harness.pruning.width import WidthPruneConfig, prune_width
from harness.recovery.registry import settings

ARCHS = ["llama", "qwen2", "gemma3"]
LAYERS = 8
EDGES = dict(protect_first=1, protect_last=1, layer_start=1, layer_end=-1)
IDS = torch.randint(3, 256, (4, 16), generator=torch.Generator().manual_seed(0))


def hybrid(**kw) -> HybridPruneConfig:
    return HybridPruneConfig(**{"ratio": 0.3, "depth_share": 0.5, **EDGES, **kw})


def model_(arch):
    return tiny_model(arch, gqa=True, layers=LAYERS)


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_share_zero_is_the_width_run(arch):
    a, b = model_(arch), model_(arch)
    plan = prune_hybrid(a, hybrid(depth_share=0.0), IDS)
    width = prune_width(b, WidthPruneConfig(ratio=0.3, criterion="taylor", layer_start=1,
                                            layer_end=-1), IDS)
    assert plan["depth"] is None and plan["depth_share_achieved"] == 0.0
    assert plan["width"]["layers"] == width["layers"]
    assert plan["ratio_achieved"] == width["ratio_achieved"]
    assert torch.equal(logits(a), logits(b))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ratio", [0.2, 0.3])
def test_share_one_is_the_depth_run(arch, ratio):
    a, b = model_(arch), model_(arch)
    plan = prune_hybrid(a, hybrid(ratio=ratio, depth_share=1.0), IDS)
    depth = prune_depth(b, DepthPruneConfig(ratio=ratio, criterion="ppl", protect_first=1,
                                            protect_last=1), IDS)
    assert plan["width"] is None and plan["depth_share_achieved"] == 1.0
    assert plan["depth"]["removed"] == depth["removed"] and depth["removed"]
    assert plan["depth"]["scores"] == depth["scores"]
    assert plan["ratio_achieved"] == depth["ratio_achieved"]
    assert torch.equal(logits(a), logits(b))


@pytest.mark.parametrize("arch", ARCHS)
def test_achieved_fraction_within_one_percent_at_every_share(arch):
    """Shares 0..0.75 at two sizes; share 1 removes whole blocks, so it is matched at a size
    that is a whole number of blocks (as the depth run would be)."""
    hf = model_(arch).config
    blocks = 2 * unit_params(hf, "block") / total_params(hf)
    cases = [(r, s) for r in (0.25, 0.4) for s in (0.0, 0.25, 0.5, 0.75)] + [(blocks, 1.0)]
    shares = []
    for ratio, share in cases:
        model = model_(arch)
        plan = prune_hybrid(model, hybrid(ratio=ratio, depth_share=share), IDS)
        assert abs(plan["ratio_achieved"] - ratio) <= 0.01, (ratio, share, plan["ratio_achieved"])
        assert plan["params_after"]["total"] < plan["params_before"]["total"]
        shares.append(plan["depth_share_achieved"])
        if plan["depth"] and plan["width"]:  # width scored on the shallower model
            assert len(plan["width"]["layers"]) == LAYERS - plan["depth"]["num_removed"]
    mid = shares[1:4] + shares[5:8]
    assert shares[0] == shares[4] == 0.0 and shares[-1] == 1.0
    assert all(0 < s < 1 for s in mid if s) and sum(0 < s < 1 for s in mid) >= 4


def test_width_part_is_scored_on_the_shallower_model():
    """The hybrid's width plan equals a width run on the depth run's model, at the width part's
    ratio: depth first, then width scored on what is left."""
    a, b = model_("llama"), model_("llama")
    cfg = hybrid(ratio=0.4, depth_share=0.5)
    plan = prune_hybrid(a, cfg, IDS)
    prune_depth(b, DepthPruneConfig(num_blocks=plan["depth"]["num_removed"], protect_first=1,
                                    protect_last=1), IDS)
    width = prune_width(b, WidthPruneConfig(ratio=plan["width"]["ratio_requested"],
                                            layer_start=1, layer_end=-1), IDS)
    assert plan["width"]["layers"] == width["layers"]
    assert torch.equal(logits(a), logits(b))


@pytest.mark.parametrize("arch", ARCHS)
def test_hybrid_model_saves_and_reloads_to_the_same_logits(arch, tmp_path):
    model = model_(arch)
    plan = prune_hybrid(model, hybrid(ratio=0.4, depth_share=0.5), IDS)
    assert plan["depth"]["num_removed"] and plan["width"]
    save_model(model, tiny_tokenizer(), tmp_path / "m", plan=plan)
    back, _ = load_model(ModelConfig(path=str(tmp_path / "m"), dtype="float32",
                                     attn_implementation="eager"))  # as the tiny model
    assert torch.equal(logits(back.eval()), logits(model.eval()))


def test_cached_scores_give_the_same_model():
    """The importance the pipeline caches (score_hybrid) reused by apply: same model."""
    a, b = model_("llama"), model_("llama")
    cfg = hybrid(ratio=0.4)
    scores = score_hybrid(copy.deepcopy(a), cfg, IDS)
    assert isinstance(scores, dict)  # the depth part's block scores
    prune_hybrid(a, cfg, IDS, scores)
    prune_hybrid(b, cfg, IDS)
    assert torch.equal(logits(a), logits(b))


def _spec(tiny_dir, prune) -> RunSpec:
    model = ModelConfig(path=str(tiny_dir), dtype="float32")
    return RunSpec(model, DataConfig(), prune, settings(), EvalConfig(),
                   hf_config=load_hf_config(model))


def _keys(spec):
    return {k: config_key(v) for k, v in stage_keys(spec).items()}


def test_importance_key_does_not_change_with_the_share(tiny_dir):
    """Depth scores of the dense model do not depend on the share: one entry for every share
    (and the plain depth run's); share 0's is the width run's; a window criterion's does."""
    base = HybridPruneConfig(ratio=0.4, protect_first=1, protect_last=1, layer_start=1,
                             layer_end=-1)
    keys = [_keys(_spec(tiny_dir, replace(base, depth_share=s))) for s in (0.5, 0.75, 1.0)]
    assert len({k["importance"] for k in keys}) == 1
    assert len({k["pruned"] for k in keys}) == 3
    depth = _keys(_spec(tiny_dir, DepthPruneConfig(ratio=0.4, protect_first=1, protect_last=1)))
    assert keys[0]["importance"] == depth["importance"]
    width = _keys(_spec(tiny_dir, WidthPruneConfig(ratio=0.4, layer_start=1, layer_end=-1)))
    assert _keys(_spec(tiny_dir, replace(base, depth_share=0.0)))["importance"] == \
        width["importance"]
    other = _keys(_spec(tiny_dir, replace(base, depth_criterion="taylor")))
    assert other["importance"] != keys[0]["importance"]
    assert _keys(_spec(tiny_dir, replace(base, width_criterion="l2")))["importance"] == \
        keys[0]["importance"]  # the width part is scored after depth, never cached alone
    window = [_keys(_spec(tiny_dir, replace(base, depth_criterion="angular", depth_share=s)))
              for s in (0.5, 1.0)]
    assert window[0]["importance"] != window[1]["importance"]


def test_bad_hybrid_configs_raise_one_line():
    hf = model_("llama").config
    for cfg, phrase in (
        (hybrid(depth_share=1.5), "prune.depth_share=1.5 must be in [0, 1]"),
        (hybrid(ratio=None), "must be in (0, 1)"),
        (hybrid(depth_unit="attn"), "prune.depth_unit=attn with width pruning"),
        (hybrid(depth_criterion="flap"), "prune.depth_criterion"),
        (hybrid(width_criterion="ppl"), "prune.width_criterion"),
        (hybrid(ratio=0.9, depth_share=1.0), "depth part"),
        (hybrid(layer_start=7), "width part"),
    ):
        with pytest.raises(ValueError, match=None) as e:
            cfg.validate(hf)
        assert phrase in str(e.value) and "\n" not in str(e.value), (phrase, str(e.value))


def test_pipeline_scores_the_dense_model_once_across_shares(tiny_dir, text_file, tmp_path):
    """A share sweep through the app: one importance entry, one pruned model per share, the
    achieved split in the row, and the saved hybrid model reloads to the same PPL."""
    from test_app import _overrides, _prune_overrides
    from test_config import _compose

    from harness.cache.store import StageCache
    from harness.config import validate
    from harness.pipeline import Run

    cache = StageCache(tmp_path / "cache")
    hyb = ["prune=hybrid", "prune.ratio=0.4", "prune.protect_first=1", "prune.protect_last=1",
           "prune.layer_start=0", "prune.layer_end=-1"]
    rows = {}
    for share in (0.5, 0.75, 1.0):
        spec = validate(_compose(_prune_overrides(tiny_dir, text_file, tmp_path, *hyb,
                                                  f"prune.depth_share={share}")))
        rows[share] = Run(spec, tmp_path / f"h{share}", cache).execute()
    stages = [s.split("/")[0] for s in cache.computed]
    assert stages.count("importance") == 1 and stages.count("pruned") == 3
    assert 0 < rows[0.5]["prune/depth_share_achieved"] < 1 and rows[0.5]["prune/num_removed"] == 1
    assert rows[1.0]["prune/depth_share_achieved"] == 1.0
    assert all(abs(r["prune/ratio_achieved"] - 0.4) <= 0.01 for r in rows.values())
    back = Run(validate(_compose(_overrides(tmp_path / "h0.5" / "model", text_file, tmp_path))),
               tmp_path / "back", cache).execute()
    assert back[f"ppl/{text_file}"] == rows[0.5][f"ppl/{text_file}"]


@pytest.mark.parametrize("kw", [
    dict(width_criterion="flap", scope="global"),
    dict(width_criterion="taylor", attn_unit="kv_group", depth_criterion="block_influence"),
    dict(iterative=True, width_criterion="l2"),
], ids=["flap_global", "kv_group_block_influence", "iterative_l2"])
def test_other_criteria_and_options_keep_their_meaning(kw):
    """Width and depth options pass through: share 0 is that width run, the mix is matched."""
    a, b = model_("qwen2"), model_("qwen2")
    plan = prune_hybrid(a, hybrid(ratio=0.3, depth_share=0.0, **kw), IDS)
    width_kw = {k: v for k, v in kw.items() if k in ("scope", "attn_unit")}
    width = prune_width(b, WidthPruneConfig(ratio=0.3, criterion=kw["width_criterion"],
                                            layer_start=1, layer_end=-1, **width_kw), IDS)
    assert plan["width"]["layers"] == width["layers"]
    assert torch.equal(logits(a), logits(b))
    mixed = model_("qwen2")
    plan = prune_hybrid(mixed, hybrid(ratio=0.4, depth_share=0.5, **kw), IDS)
    assert plan["depth"]["num_removed"] and plan["width"]
    assert plan["depth"]["iterative"] == kw.get("iterative", False)
    assert abs(plan["ratio_achieved"] - 0.4) <= 0.01

"""prune.order=width_first: width scored on the dense model, then depth on the thinner model;
the same shape as depth_first at every share, only the chosen units differ (issue 26)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from harness.models.loader import ModelConfig, load_model, save_model
from harness.models.tiny import tiny_tokenizer
from harness.pruning.depth import DepthPruneConfig, prune_depth
from harness.pruning.hybrid import prune_hybrid, score_hybrid
from harness.pruning.width import prune_width
from tests.test_hybrid import ARCHS, IDS, _keys, _spec, hybrid, logits, model_


def shapes(model) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("arch", ARCHS)
def test_width_first_has_the_depth_first_shape_at_every_share(arch):
    """Same blocks removed in number, same layer widths, same parameter count; matched size."""
    for ratio in (0.25, 0.4):
        for share in (0.25, 0.5, 0.75):
            a, b = model_(arch), model_(arch)
            first = prune_hybrid(a, hybrid(ratio=ratio, depth_share=share), IDS)
            second = prune_hybrid(b, hybrid(ratio=ratio, depth_share=share, order="width_first"),
                                  IDS)
            assert second["order"] == "width_then_depth", second["order"]
            assert shapes(a) == shapes(b), (ratio, share)
            assert second["params_after"] == first["params_after"]
            assert abs(second["ratio_achieved"] - ratio) <= 0.01
            if first["depth"] and first["width"]:  # the thinner blocks count for depth
                assert 0 < second["depth_share_achieved"] < first["depth_share_achieved"]


def test_width_first_is_the_width_run_then_the_depth_run():
    """The width part on the dense model, then depth blocks ranked on the thinner model."""
    a, b = model_("llama"), model_("llama")
    cfg = hybrid(ratio=0.4, depth_share=0.5, order="width_first")
    plan = prune_hybrid(a, cfg, IDS)
    width = prune_width(b, cfg.dense_width_config(b.config), IDS)
    depth = prune_depth(b, DepthPruneConfig(num_blocks=plan["depth"]["num_removed"],
                                            protect_first=1, protect_last=1), IDS)
    assert plan["width"]["layers"] == width["layers"]
    assert plan["depth"]["scores"] == depth["scores"] and depth["removed"]
    assert torch.equal(logits(a), logits(b))


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_the_edges_have_no_order(share):
    a, b = model_("llama"), model_("llama")
    prune_hybrid(a, hybrid(depth_share=share), IDS)
    plan = prune_hybrid(b, hybrid(depth_share=share, order="width_first"), IDS)
    assert plan["order"] == "depth_then_width"  # share 0 = width run, 1 = depth run
    assert torch.equal(logits(a), logits(b))


@pytest.mark.parametrize("arch", ARCHS)
def test_width_first_model_saves_and_reloads_to_the_same_logits(arch, tmp_path):
    model = model_(arch)
    plan = prune_hybrid(model, hybrid(ratio=0.4, order="width_first"), IDS)
    assert plan["depth"]["num_removed"] and plan["width"]
    save_model(model, tiny_tokenizer(), tmp_path / "m", plan=plan)
    back, _ = load_model(ModelConfig(path=str(tmp_path / "m"), dtype="float32",
                                     attn_implementation="eager"))
    assert torch.equal(logits(back.eval()), logits(model.eval()))


def test_cached_width_scores_give_the_same_model():
    a, b = model_("llama"), model_("llama")
    cfg = hybrid(ratio=0.4, order="width_first")
    scores = score_hybrid(copy.deepcopy(a), cfg, IDS)
    assert not isinstance(scores, dict)  # the dense model's width scores
    prune_hybrid(a, cfg, IDS, scores)
    prune_hybrid(b, cfg, IDS)
    assert torch.equal(logits(a), logits(b))


def test_keys(tiny_dir):
    """depth_first (the default) adds no key field, so earlier rows keep their keys;
    width_first keys its own pruned model, and its first step is the width run's scores; at
    shares 0 and 1 the order is no key at all."""
    base = hybrid(ratio=0.4)
    plain = _keys(_spec(tiny_dir, base))
    assert "order" not in base.key_fields()
    wf = _keys(_spec(tiny_dir, replace(base, order="width_first")))
    assert wf["pruned"] != plain["pruned"] and wf["importance"] != plain["importance"]
    assert wf["importance"] == _keys(_spec(tiny_dir, replace(base, depth_share=0.0)))["importance"]
    other = _keys(_spec(tiny_dir, replace(base, order="width_first", depth_share=0.75)))
    assert other["importance"] == wf["importance"] and other["pruned"] != wf["pruned"]
    for share in (0.0, 1.0):  # the edges have no order: one entry for both
        edge = replace(base, depth_share=share)
        assert _keys(_spec(tiny_dir, replace(edge, order="width_first"))) == \
            _keys(_spec(tiny_dir, edge))


def test_bad_orders_raise_one_line():
    hf = model_("llama").config
    for cfg, phrase in (
        (hybrid(order="sideways"), "prune.order='sideways'"),
        (hybrid(order="width_first", scope="global", width_criterion="flap"),
         "needs prune.scope=uniform"),
        (hybrid(order="width_first", layer_start=2), "to cover the depth candidates"),
    ):
        with pytest.raises(ValueError) as e:
            cfg.validate(hf)
        assert phrase in str(e.value) and "\n" not in str(e.value), (phrase, str(e.value))

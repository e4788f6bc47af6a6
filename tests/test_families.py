"""Every supported family, on a tiny random config: physically pruned == dense with the removed
units masked or skipped (depth blocks, attention-only, MLP-only, width q_head and kv_group, FLAP
with bias compensation), saved == reloaded logits, uniform shapes load with stock
`from_pretrained`, and the figures that read module shapes (params, FLOPs, LoRA targets) agree
with the model. The references below reach modules only through the adapter, so a new family
is covered by adding its tiny config (harness/models/tiny.py)."""

from __future__ import annotations

import copy

import pytest
import references
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM

from harness.evaluation.efficiency import flops_per_token
from harness.models.adapters import adapter_for
from harness.models.loader import ModelConfig, load_model, save_model
from harness.models.params import count_params
from harness.models.tiny import FAMILIES, tiny_model, tiny_tokenizer
from harness.models.uneven import is_uneven
from harness.pruning.blocks import remove_blocks, remove_sublayers
from harness.pruning.depth import total_params, unit_params
from harness.pruning.importance.depth import candidates, ppl_scores, ppl_scores_naive
from harness.pruning.importance.width import score_groups
from harness.pruning.ratio import Geometry, removed_params, solve_counts
from harness.pruning.width import WidthPruneConfig, prune_width

IDS = torch.randint(3, 256, (3, 14), generator=torch.Generator().manual_seed(0))
FAMILY = pytest.mark.parametrize("family", FAMILIES)


def logits(model, ids=IDS):
    return references.logits(model, ids)


def skipped_logits(model, blocks=(), unit="block"):
    return references.skipped_logits(model, IDS, blocks, unit)


def masked_logits(dense, plan, means=None):
    return references.masked_logits(dense, plan, IDS, means)


def model_(family, **kw):
    """8 query heads in 4 KV groups of 2 (head_dim 8), 6 layers."""
    return tiny_model(family, heads=8, layers=6, **kw)


def reload(model, tmp_path):
    """Save with the harness and load back through its loader (uneven or not)."""
    out = save_model(model, tiny_tokenizer(), tmp_path / "m")
    return load_model(ModelConfig(path=str(out), attn_implementation="eager"))[0]


# ---- depth ----------------------------------------------------------------------------------
@FAMILY
def test_remove_blocks_equals_skipping_them(family, tmp_path):
    model = model_(family)
    expected = skipped_logits(model, [1, 4])
    types = getattr(model.config, "layer_types", None)
    remove_blocks(model, [4, 1])
    assert model.config.num_hidden_layers == 4
    if types is not None:
        assert model.config.layer_types == [types[i] for i in (0, 2, 3, 5)]
    torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    torch.testing.assert_close(logits(stock), logits(model), atol=0, rtol=0)


@FAMILY
@pytest.mark.parametrize("unit", ["attn", "mlp"])
def test_remove_sublayers_equals_zeroing_them(family, unit, tmp_path):
    model = model_(family)
    if unit == "attn" and len(set(getattr(model.config, "layer_types", None) or [])) > 1:
        pytest.skip("validation refuses attn-only removal on mixed sliding/global layers")
    expected = skipped_logits(model, [0, 3], unit)
    before = count_params(model)["total"]
    remove_sublayers(model, [0, 3], unit)
    assert before - count_params(model)["total"] == 2 * unit_params(model.config, unit)
    assert total_params(model.config) == count_params(model)["total"]
    torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(reload(model, tmp_path)), logits(model), atol=0, rtol=0)


@FAMILY
@pytest.mark.parametrize("unit", ["block", "attn", "mlp"])
def test_cached_ppl_criterion_reads_the_right_residual_points(family, unit):
    model = model_(family)
    cands = candidates(model, unit, 1, 1)
    fast, slow = ppl_scores(model, IDS, cands, unit), ppl_scores_naive(model, IDS, cands, unit)
    for i in cands:
        assert fast[i] == pytest.approx(slow[i], rel=1e-5)


@FAMILY
def test_param_counts_from_the_meta_model(family):
    model = model_(family, tie=True)
    layer = adapter_for(model).layers(model)[0]
    assert total_params(model.config) == count_params(model)["total"]
    assert unit_params(model.config) == sum(p.numel() for p in layer.parameters())
    assert unit_params(model.config, "attn") + unit_params(model.config, "mlp") == \
        unit_params(model.config)


# ---- width ----------------------------------------------------------------------------------
def width_cfg(**kw):
    return WidthPruneConfig(**{"criterion": "random", "layer_start": 1, "layer_end": -1,
                               "unit_ratio": 0.5, **kw})


@FAMILY
@pytest.mark.parametrize("unit", ["q_head", "kv_group"])
def test_width_pruned_equals_masked_dense_and_reloads(family, unit, tmp_path):
    model = model_(family)
    dense = copy.deepcopy(model)
    plan = prune_width(model, width_cfg(attn_unit=unit, scope="global", unit_ratio=0.4), IDS)
    assert plan["params_after"] == count_params(model)
    assert any(len(k["kept_q_heads"]) < 8 for k in plan["layers"].values())
    assert is_uneven(model.config)
    torch.testing.assert_close(logits(model), masked_logits(dense, plan), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(reload(model, tmp_path)), logits(model), atol=0, rtol=0)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(IDS[:2], use_cache=True, **kw),
                       model.generate(IDS[:2], use_cache=False, **kw))


@FAMILY
@pytest.mark.parametrize("unit", ["q_head", "kv_group"])
def test_uniform_width_loads_with_stock_from_pretrained(family, unit, tmp_path):
    model = model_(family)
    dense = copy.deepcopy(model)
    plan = prune_width(model, width_cfg(attn_unit=unit, layer_start=0, layer_end=6), IDS)
    assert not is_uneven(model.config)
    torch.testing.assert_close(logits(model), masked_logits(dense, plan), atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    assert stock.config.num_attention_heads == 4
    torch.testing.assert_close(logits(stock), logits(model), atol=0, rtol=0)


@FAMILY
def test_flap_bias_compensation_equals_mean_substitution(family, tmp_path):
    model = model_(family)
    dense = copy.deepcopy(model)
    cfg = width_cfg(criterion="flap", scope="global", unit_ratio=0.3)
    scores = score_groups(model, cfg, IDS)
    plan = prune_width(model, cfg, IDS, scores=scores)
    means = {(i, "attn"): scores.attn_mean_inp[i] for i in scores.layers}
    means |= {(i, "mlp"): scores.mlp_mean_inp[i] for i in scores.layers}
    adapter = adapter_for(model)
    assert adapter.out_proj(adapter.layers(model)[1], "mlp").bias is not None
    torch.testing.assert_close(logits(model), masked_logits(dense, plan, means), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(logits(reload(model, tmp_path)), logits(model), atol=0, rtol=0)


@FAMILY
@pytest.mark.parametrize("unit", ["q_head", "kv_group"])
def test_ratio_solver_counts_what_surgery_removes(family, unit):
    model = model_(family)
    cfg = width_cfg(criterion="l1", attn_unit=unit, unit_ratio=None, ratio=0.2)
    geo = Geometry.from_config(model.config, unit)
    counts = solve_counts(geo, cfg, 4)
    plan = prune_width(model, cfg, IDS)
    removed = plan["params_before"]["total"] - plan["params_after"]["total"]
    assert removed == removed_params(geo, cfg, 4, counts.attn_removed, counts.mlp_kept)
    assert abs(plan["ratio_achieved"] - 0.2) <= 0.01


# ---- figures that read shapes -----------------------------------------------------------------
@FAMILY
def test_analytic_flops_equal_flop_counter_dense_and_pruned(family):
    for prune in (None, "width", "depth"):
        model = model_(family)
        if prune == "width":
            prune_width(model, width_cfg(scope="global", unit_ratio=0.4), IDS)
        elif prune == "depth":
            remove_blocks(model, [2])
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(IDS)
        assert counter.get_total_flops() == IDS.numel() * flops_per_token(model, IDS.shape[1])


@FAMILY
def test_lora_targets_wrap_every_projection(family):
    from harness.recovery.methods.lora import attach_lora
    from harness.recovery.registry import settings

    model = model_(family)
    adapter = adapter_for(model)
    linears = sum(isinstance(m, torch.nn.Linear) for m in adapter.layers(model)[0].modules())
    peft_model = attach_lora(model, settings(name="lora", tokens=1))
    layer = adapter.layers(peft_model)[0]
    assert sum(hasattr(m, "lora_A") for m in layer.modules()) == linears


@FAMILY
def test_adapter_logits_from_the_last_block_match_the_model(family):
    from harness.pruning.blocks import final_hidden

    model = model_(family)
    with torch.no_grad():
        ours = adapter_for(model).logits(model, final_hidden(model, IDS))
    torch.testing.assert_close(ours, logits(model), atol=1e-5, rtol=0)

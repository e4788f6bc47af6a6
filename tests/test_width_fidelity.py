"""LLM-Pruner's GQA fold (prune.gqa_fold=llm_pruner), its count rule, and the measured-loss
criterion (prune.criterion=loss). Tiny models only; the golden comparison with LLM-Pruner's own
code on SmolLM2 is tests/test_peer_fixtures.py (integration)."""

from __future__ import annotations

import copy
from dataclasses import asdict

import pytest
import torch
from transformers import AutoModelForCausalLM

from harness.models.shapes import shape_config
from harness.models.tiny import tiny_config
from harness.pruning.importance.width import score_groups
from harness.pruning.ratio import Geometry, solve_counts
from harness.pruning.width import WidthPruneConfig, apply_width

IDS = torch.randint(3, 256, (4, 16), generator=torch.Generator().manual_seed(0))


def cfg_(**kw) -> WidthPruneConfig:
    base = dict(criterion="taylor", attn_unit="kv_group", layer_start=0, layer_end=3,
                unit_ratio=0.33)
    return WidthPruneConfig(**{**base, **kw})


def model_():
    """3 layers, 6 query heads of 16 on 2 KV heads (groups of 3, like SmolLM2's 9 on 3)."""
    torch.manual_seed(0)
    cfg = tiny_config("llama", layers=3, hidden=96, heads=6)
    cfg.num_key_value_heads = 2
    cfg._attn_implementation = "eager"
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def literal_llm_pruner(model, criterion: str) -> dict[int, torch.Tensor]:
    """KV-group scores computed the way LLMPruner/pruner/hf_llama_pruner.py does, step by step:
    per-member salience over the KV group's dependency group (k, v, q rows; o columns),
    `imp.view(len // min, min).sum(0)` alignment, sum reduction, then MetaPruner's
    consecutive-group sum over head_dim."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        model(IDS, labels=IDS, use_cache=False).loss.backward()
    out = {}
    for i, layer in enumerate(model.model.layers):
        a = layer.self_attn
        imps = []
        for mod, dim in ((a.k_proj, 1), (a.v_proj, 1), (a.q_proj, 1), (a.o_proj, 0)):
            w, g = mod.weight.detach(), mod.weight.grad
            if criterion == "l1":
                imps.append(w.abs().sum(dim))
            elif criterion == "vector":
                imps.append((w * g).sum(dim).abs())
            else:
                imps.append((w * g).abs().sum(dim))
        size = min(len(t) for t in imps)
        imp = torch.stack([t.view(len(t) // size, size).sum(0) for t in imps]).sum(0)
        out[i] = imp.view(-1, a.head_dim).sum(1).double()
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("criterion", ["taylor", "vector", "l1"])
def test_llm_pruner_fold_reproduces_its_alignment_code(criterion):
    model = model_()
    ours = score_groups(model, cfg_(criterion=criterion, gqa_fold="llm_pruner"), IDS).attn
    ref = literal_llm_pruner(model, criterion)
    for i, t in ref.items():
        torch.testing.assert_close(ours[i], t, rtol=1e-5, atol=1e-9)


def test_fold_moves_only_the_q_and_o_members():
    """Aligned and folded KV-group scores differ by how q/o per-head sums are grouped: aligned
    group g = heads {3g..3g+2}, folded group g = heads {g, g+2, g+4} (6 heads on 2 groups)."""
    model = model_()
    per_head = score_groups(model, cfg_(criterion="l2", attn_unit="q_head",
                                        unit_ratio=None, ratio=0.1), IDS).attn
    kv_only = {}
    for i, layer in enumerate(model.model.layers):
        a = layer.self_attn
        w = torch.cat([a.k_proj.weight, a.v_proj.weight], 1).detach().square().sum(1)
        kv_only[i] = w.view(2, -1).sum(1).double()
    aligned = score_groups(model, cfg_(criterion="l2"), IDS).attn
    folded = score_groups(model, cfg_(criterion="l2", gqa_fold="llm_pruner"), IDS).attn
    for i in per_head:
        h = per_head[i]
        torch.testing.assert_close(aligned[i], kv_only[i] + h.view(2, 3).sum(1))
        torch.testing.assert_close(folded[i], kv_only[i] + h.view(3, 2).sum(0))


def test_llm_pruner_count_rule_on_smollm2():
    """LLM-Pruner keeps int(192 * (1 - r)) KV channels and removes whole heads: ratio 0.63
    removes 1 of 3 KV groups (aligned rounding removes 2); MLP keeps int(1536 * (1 - r))."""
    geo = Geometry.from_config(shape_config("smollm2_135m_shape"), "kv_group")
    layers = 24
    for r, peer_groups, ours_groups, kept in ((0.33, 1, 1, 1029), (0.63, 1, 2, 568)):
        peer = solve_counts(geo, cfg_(unit_ratio=r, gqa_fold="llm_pruner"), layers)
        ours = solve_counts(geo, cfg_(unit_ratio=r), layers)
        assert (peer.attn_removed, peer.mlp_kept) == (peer_groups * layers, kept * layers)
        assert ours.attn_removed == ours_groups * layers


def _removed(model, layer: int, unit: str, u: int):
    """A copy of `model` without unit u of `layer`: a KV group sliced out physically, a single
    query head by zeroing its o_proj columns (what slicing it out does to the output)."""
    pruned = copy.deepcopy(model)
    if unit == "kv_group":
        plan = {layer: {"kept_q_heads": [h for h in range(6) if h // 3 != u],
                        "kept_kv_heads": [1 - u],
                        "kept_mlp_channels": list(range(model.config.intermediate_size))}}
        apply_width(pruned, plan)
    else:
        with torch.no_grad():
            pruned.model.layers[layer].self_attn.o_proj.weight[:, u * 16:(u + 1) * 16] = 0
    return pruned


@pytest.mark.parametrize("unit", ["kv_group", "q_head"])
def test_loss_scores_are_the_loss_increase_of_each_removal(unit):
    """Prefix-cached scores == full forwards of the pruned model, one unit at a time."""
    model = model_()
    scores = score_groups(model, cfg_(criterion="loss", attn_unit=unit), IDS)
    with torch.no_grad():
        base = model(IDS, labels=IDS).loss.item()
        assert scores.calibration["loss"] == pytest.approx(base, rel=1e-6)
        for i in range(3):
            assert len(scores.attn[i]) == (2 if unit == "kv_group" else 6)
            for u, s in enumerate(scores.attn[i].tolist()):
                loss = _removed(model, i, unit, u)(IDS, labels=IDS).loss.item()
                assert s == pytest.approx(loss - base, abs=2e-6)
                assert s != 0.0


def test_loss_criterion_scores_mlp_with_taylor_unless_told():
    model = model_()
    loss = score_groups(model, cfg_(criterion="loss"), IDS)
    taylor = score_groups(model, cfg_(criterion="taylor"), IDS)
    l2 = score_groups(model, cfg_(criterion="l2"), IDS)
    other = score_groups(model, cfg_(criterion="loss", mlp_criterion="l2"), IDS)
    for i in range(3):
        torch.testing.assert_close(loss.mlp[i], taylor.mlp[i])
        torch.testing.assert_close(other.mlp[i], l2.mlp[i])
        torch.testing.assert_close(other.attn[i], loss.attn[i])


@pytest.mark.parametrize("kw, msg", [
    (dict(criterion="flap", gqa_fold="llm_pruner"), "applies to LLM-Pruner's criteria"),
    (dict(criterion="loss", gqa_fold="llm_pruner"), "applies to LLM-Pruner's criteria"),
    (dict(gqa_fold="peer"), "gqa_fold='peer' is unknown"),
    (dict(attn_unit="q_head", gqa_fold="llm_pruner"), "needs prune.attn_unit=kv_group"),
    (dict(criterion="loss", mlp_criterion="flap"), "mlp_criterion='flap' is unknown"),
    (dict(criterion="loss", mlp_criterion="loss"), "mlp_criterion='loss' is unknown"),
    (dict(criterion="flap", mlp_criterion="taylor"), "cannot be set with flap"),
])
def test_bad_settings_fail_in_one_line(kw, msg):
    with pytest.raises(ValueError, match=msg):
        cfg_(layer_start=4, layer_end=-2, **kw).validate(shape_config("smollm2_135m_shape"))


def test_gqa_fold_and_mlp_criterion_key_only_where_they_apply():
    """Both fields are in the run and importance keys of criteria they change, not of others."""
    taylor, flap, loss = cfg_(), cfg_(criterion="flap"), cfg_(criterion="loss")
    assert taylor.key_fields()["gqa_fold"] == "aligned"
    assert cfg_(gqa_fold="llm_pruner").importance_fields()["gqa_fold"] == "llm_pruner"
    assert "gqa_fold" not in flap.key_fields() and "gqa_fold" not in loss.key_fields()
    assert "mlp_criterion" not in flap.key_fields()
    assert cfg_(criterion="loss", mlp_criterion="l2").importance_fields()["mlp_criterion"] == "l2"
    assert set(taylor.key_fields()) < set(asdict(taylor))


def test_fidelity_agreement_counts_units_both_keep_or_both_remove():
    from harness.reporting.fidelity import width_agreement

    fixture = {"dense": {"kv_heads": 3},
               "layers": {"4": {"kept_kv_heads": [0, 1], "kept_q_heads": [0, 1, 2, 3, 4, 5],
                                "mlp_kept_mask": "f0"},
                          "5": {"kept_kv_heads": [1, 2], "kept_q_heads": [3, 4, 5, 6, 7, 8],
                                "mlp_kept_mask": "0f"}}}
    plan = {"layers": {"4": {"kept_kv_heads": [0, 1], "kept_mlp_channels": [4, 5, 6, 7]},
                       "5": {"kept_kv_heads": [0, 2], "kept_mlp_channels": [0, 1, 2, 4]}}}
    kv, ch, same = width_agreement(plan, fixture)
    assert (kv, ch, same) == (100 * 4 / 6, 100 * 14 / 16, 1)

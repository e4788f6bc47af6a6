"""Depth pruning: exact equivalence with the dense model, checkpoints, criteria, validation."""

from __future__ import annotations

import json
import math

import pytest
import references
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from harness.models import cache_kwarg
from harness.models.adapters import adapter_for
from harness.models.params import count_params
from harness.models.tiny import tiny_model
from harness.models.uneven import build_skeleton, load_uneven
from harness.pruning.blocks import (
    count_block_forwards,
    decoder_layers,
    remove_blocks,
    remove_sublayers,
)
from harness.pruning.depth import (
    DepthPruneConfig,
    prune_depth,
    save_plan,
    score_blocks,
    select_blocks,
    total_params,
    unit_params,
)
from harness.pruning.importance.depth import candidates, ppl_scores, ppl_scores_naive
from harness.pruning.importance.registry import DEPTH_CRITERIA

ARCHS = [("llama", False), ("llama", True)]  # every family at GQA: test_families.py


def calib(n=2, seq=16, seed=0):
    return torch.randint(3, 256, (n, seq), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def dense_reference(model, ids, blocks=(), unit="block"):
    """Logits of the unpruned model with `blocks` (or their sublayer) bypassed by hooks."""
    return references.skipped_logits(model, ids, blocks, unit)


@pytest.mark.parametrize("arch,gqa", ARCHS)
def test_remove_blocks_equals_skipping_them(arch, gqa):
    model, ids = tiny_model(arch, gqa=gqa, layers=6), calib()
    expected = dense_reference(model, ids, [1, 4])
    remove_blocks(model, [4, 1])
    assert model.config.num_hidden_layers == 4 and len(decoder_layers(model)) == 4
    adapter = adapter_for(model)
    assert [adapter.attention(layer).layer_idx for layer in adapter.layers(model)] == [0, 1, 2, 3]
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == 4
    torch.testing.assert_close(logits(model, ids), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,gqa", [("llama", True), ("qwen2", True)])
@pytest.mark.parametrize("unit", ["attn", "mlp"])
def test_remove_sublayers_equals_zeroing_them(arch, gqa, unit):
    model, ids = tiny_model(arch, gqa=gqa, layers=5), calib()
    expected = dense_reference(model, ids, [0, 3], unit)
    before = count_params(model)["total"]
    remove_sublayers(model, [0, 3], unit)
    assert before - count_params(model)["total"] == 2 * unit_params(model.config, unit)
    assert total_params(model.config) == count_params(model)["total"]
    torch.testing.assert_close(logits(model, ids), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", [{"num_blocks": 0}, {"ratio": 0.0}], ids=["n0", "r0"])
def test_removing_nothing_changes_nothing(kw):
    model, ids = tiny_model(layers=6), calib()
    expected = logits(model, ids)
    plan = prune_depth(model, DepthPruneConfig(**kw, protect_first=1, protect_last=1), ids)
    assert plan["removed"] == [] and plan["ratio_achieved"] == 0.0
    assert plan["params_after"] == plan["params_before"]
    assert torch.equal(logits(model, ids), expected)


def test_an_empty_block_list_is_refused_not_a_silent_dense_run():
    """`prune.blocks=[]` is a typo far more often than a control (ratio 0 is the control)."""
    with pytest.raises(ValueError, match=r"prune.blocks=\[\] removes nothing"):
        prune_depth(tiny_model(layers=6), DepthPruneConfig(blocks=[], protect_first=1,
                                                            protect_last=1), calib())


def test_block_checkpoint_reloads_with_stock_transformers(tmp_path):
    model, ids = tiny_model("qwen2", layers=6, tie=True), calib()
    cfg = DepthPruneConfig(criterion="magnitude", num_blocks=2, protect_first=1, protect_last=1)
    plan = prune_depth(model, cfg, ids)
    model.save_pretrained(tmp_path, safe_serialization=True)
    save_plan(plan, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert reloaded.config.num_hidden_layers == 4
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), atol=0, rtol=0)
    assert json.loads((tmp_path / "prune_plan.json").read_text())["removed"] == plan["removed"]
    assert not list(tmp_path.glob(".prune_plan-*")), "temporary plan file left behind"


@pytest.mark.parametrize("unit", ["attn", "mlp"])
def test_sublayer_checkpoint_reloads_strictly_through_skeleton(tmp_path, unit):
    model, ids = tiny_model("llama", layers=5, tie=True), calib()
    remove_sublayers(model, [1, 2], unit)
    model.save_pretrained(tmp_path, safe_serialization=True)
    skeleton = build_skeleton(model.config)
    assert set(skeleton.state_dict()) == set(model.state_dict())
    reloaded = load_uneven(tmp_path, dtype=torch.float32, attn_implementation="eager")
    assert getattr(reloaded.config, f"harness_skip_{unit}") == [1, 2]
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), atol=0, rtol=0)


@pytest.mark.parametrize("unit,blocks", [("block", [0, 2]), ("attn", [0, 2]), ("mlp", [1])])
def test_generate_with_kv_cache_after_removal(unit, blocks):
    model, prompt = tiny_model("llama", layers=5), calib(n=1, seq=6)
    cfg = DepthPruneConfig(blocks=blocks, unit=unit, protect_first=0, protect_last=0)
    prune_depth(model, cfg, prompt)
    kw = dict(do_sample=False, max_new_tokens=6, min_new_tokens=6, pad_token_id=0)
    cached = model.generate(prompt, use_cache=True, **kw)
    uncached = model.generate(prompt, use_cache=False, **kw)
    assert cached.shape == (1, 12)
    assert torch.equal(cached, uncached)
    with torch.no_grad():  # prefill + continuation through the KV cache, by hand
        past = model(input_ids=prompt[:, :4], use_cache=True).past_key_values
        assert past.get_seq_length() == 4
        step = model(input_ids=prompt[:, 4:], use_cache=True, **{cache_kwarg(model): past}).logits
    torch.testing.assert_close(step, logits(model, prompt)[:, 4:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("unit", ["block", "attn", "mlp"])
def test_cached_ppl_equals_naive_with_about_half_the_forwards(unit):
    layers = 12
    model, ids = tiny_model("qwen2", layers=layers), calib()
    cands = candidates(model, unit, 2, 1)
    with count_block_forwards(model) as fast_count:
        fast = ppl_scores(model, ids, cands, unit)
    with count_block_forwards(model) as slow_count:
        slow = ppl_scores_naive(model, ids, cands, unit)
    assert list(fast) == cands == list(slow)
    torch.testing.assert_close(list(fast.values()), list(slow.values()), rtol=1e-10, atol=0)
    assert sorted(fast, key=fast.get) == sorted(slow, key=slow.get)
    i = cands[len(cands) // 2]  # independent check: HF's own loss with block i bypassed by a hook
    hooked = dense_reference(model, ids, [i], unit)
    loss = torch.nn.functional.cross_entropy(hooked[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert fast[i] == pytest.approx(math.exp(loss.item()), rel=1e-5)
    assert slow_count.count == len(cands) * (layers - (unit == "block"))  # skipped block not run
    tail = sum(layers - 1 - i for i in cands)  # blocks after each candidate
    partial = len(cands) if unit == "attn" else 0  # the candidate run without its attention
    assert fast_count.count == layers + tail + partial
    assert fast_count.count < 0.65 * slow_count.count


@pytest.mark.parametrize("unit", ["block", "attn", "mlp"])
def test_taylor_equals_brute_force(unit):
    model, ids = tiny_model("qwen2", layers=4), calib()
    cfg = DepthPruneConfig(
        criterion="taylor", num_blocks=1, unit=unit, protect_first=0, protect_last=0
    )
    scores = score_blocks(model, cfg, ids)
    assert all(p.grad is None for p in model.parameters())
    model.zero_grad()
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    adapter = adapter_for(model)
    for i, layer in enumerate(decoder_layers(model)):
        expected = sum(
            (p * p.grad).abs().sum().item()
            for module in adapter.unit_modules(layer, unit)  # a sublayer with its norms
            for name, p in module.named_parameters()
            if not name.endswith("bias")  # Shortened LLaMA scores weights only
        )
        assert scores[i] == pytest.approx(expected, rel=1e-5)


def test_magnitude_is_frobenius_norm_of_weight_matrices():
    model = tiny_model(layers=3)
    cfg = DepthPruneConfig(criterion="magnitude", num_blocks=1, protect_first=0, protect_last=0)
    scores = score_blocks(model, cfg, calib())
    layer = decoder_layers(model)[1]
    flat = torch.cat([p.flatten() for p in layer.parameters() if p.dim() == 2])
    assert scores[1] == pytest.approx(flat.norm().item(), rel=1e-6)


@pytest.mark.parametrize("criterion", DEPTH_CRITERIA.names())
def test_every_criterion_scores_candidates_and_respects_protection(criterion):
    model, ids = tiny_model("mistral", layers=8), calib()
    cfg = DepthPruneConfig(criterion=criterion, num_blocks=2, protect_first=2, protect_last=2)
    scores = score_blocks(model, cfg, ids)
    expected = [2, 3, 4] if criterion == "angular" else [2, 3, 4, 5]  # angular: window starts
    assert sorted(scores) == expected
    assert all(isinstance(s, float) and s == s for s in scores.values())
    plan = prune_depth(model, cfg, ids, scores=scores)
    assert len(plan["removed"]) == 2 and all(2 <= i < 6 for i in plan["removed"])
    assert plan["removed"] == select_blocks(scores, 2, cfg, 8)
    json.dumps(plan)
    if criterion == "angular":
        best = min(scores, key=scores.get)
        assert plan["removed"] == [best, best + 1]
    if criterion == "last":
        assert plan["removed"] == [4, 5]


def test_random_is_seeded_and_last_deterministic():
    model, ids = tiny_model(layers=10), calib()
    cfg = DepthPruneConfig(criterion="random", num_blocks=3, protect_first=1, protect_last=1)
    first = score_blocks(model, cfg, ids)
    assert score_blocks(model, cfg, ids) == first
    cfg.seed = 1
    assert score_blocks(model, cfg, ids) != first


def test_iterative_rescores_the_reduced_model():
    model, ids = tiny_model(layers=7), calib()
    cfg = DepthPruneConfig(
        criterion="ppl", num_blocks=2, iterative=True, protect_first=1, protect_last=1
    )
    reference = tiny_model(layers=7)
    plan = prune_depth(model, cfg, ids)
    assert plan["num_removed"] == 2 and len(plan["rounds"]) == 2
    one_shot = score_blocks(reference, cfg, ids)
    assert plan["rounds"][0]["scores"] == pytest.approx(one_shot, rel=1e-12)
    first = plan["rounds"][0]["removed"]
    assert first == min(one_shot, key=one_shot.get)
    remove_blocks(reference, [first])
    again = score_blocks(reference, cfg, ids)  # dense numbering shifts after `first`
    dense = {i + (i >= first): s for i, s in again.items()}
    assert plan["rounds"][1]["scores"] == pytest.approx(dense, rel=1e-12)
    assert sorted([first, plan["rounds"][1]["removed"]]) == plan["removed"]
    remove_blocks(
        reference, [plan["rounds"][1]["removed"] - (plan["rounds"][1]["removed"] > first)]
    )
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), atol=0, rtol=0)


def smollm2_config(**kw):
    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("tie", [False, True])
def test_analytic_param_counts_match_the_model(arch, tie):
    model = tiny_model(arch, layers=3, tie=tie)
    assert total_params(model.config) == count_params(model)["total"]
    layer = decoder_layers(model)[0]
    assert unit_params(model.config) == sum(p.numel() for p in layer.parameters())
    assert total_params(smollm2_config()) == 134_515_008  # SmolLM2-135M, no weights loaded


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.4])
@pytest.mark.parametrize("unit", ["block", "mlp"])
def test_ratio_removes_closest_number_of_units(ratio, unit):
    model, ids = tiny_model(layers=10, hidden=32, intermediate=64, vocab=64), calib(seq=8) % 64
    cfg = DepthPruneConfig(
        criterion="last", ratio=ratio, unit=unit, protect_first=1, protect_last=1
    )
    plan = prune_depth(model, cfg, ids)
    per_unit = unit_params(model.config, unit)
    removed = plan["params_before"]["total"] - plan["params_after"]["total"]
    assert removed == plan["num_removed"] * per_unit
    assert abs(removed - ratio * plan["params_before"]["total"]) <= per_unit / 2
    assert plan["ratio_achieved"] == pytest.approx(removed / plan["params_before"]["total"])


@pytest.mark.parametrize(
    "kw,match",
    [
        (
            {"criterion": "bogus", "num_blocks": 1},
            r"prune.criterion='bogus' is not a depth criterion; choose from ppl",
        ),
        ({"unit": "head", "num_blocks": 1}, r"prune.unit='head' is unknown; choose from block, attn"),
        ({"ratio": 1.0}, r"prune.ratio must be in \[0, 1\), got 1.0"),
        ({"ratio": -0.1}, r"prune.ratio must be in \[0, 1\)"),
        ({"num_blocks": 25}, r"num_blocks=25 must be in \[0, 24\] \(30 layers"),
        ({"blocks": [2, 10]}, r"prune.blocks \[2, 10\] has out-of-range or protected .* 4..27"),
        ({"blocks": [30]}, r"out-of-range or protected"),
        ({"ratio": 0.9}, r"needs \d+ blocks but at most 24 .* maximum reachable ratio is 0.63"),
        ({"ratio": 0.2, "num_blocks": 2}, r"set exactly one of .* \['ratio', 'num_blocks'\]"),
        ({}, r"set exactly one of prune.ratio, prune.num_blocks, prune.blocks \(got \[\]\)"),
        (
            {"criterion": "angular", "unit": "mlp", "num_blocks": 1},
            r"'angular' supports prune.unit block only",
        ),
        (
            {"criterion": "angular", "iterative": True, "num_blocks": 2},
            r"iterative is not supported",
        ),
        ({"protect_first": -1, "num_blocks": 1}, r"must be >= 0"),
    ],
)
def test_bad_configs_fail_before_loading(kw, match):
    with pytest.raises(ValueError, match=match):
        DepthPruneConfig(**kw).validate(smollm2_config())


def test_ratio_maps_to_blocks_on_smollm2_shape():
    hf = smollm2_config()
    assert DepthPruneConfig(ratio=0.25).blocks_for_ratio(hf) == 9  # 0.25*134.5M / 3.54M = 9.5-
    DepthPruneConfig(ratio=0.25).validate(hf)


def test_iterative_sublayers_never_pick_a_removed_one_twice():
    model, ids = tiny_model(layers=5), calib()
    cfg = DepthPruneConfig(
        criterion="taylor",
        num_blocks=3,
        unit="mlp",
        iterative=True,
        protect_first=1,
        protect_last=0,
    )
    plan = prune_depth(model, cfg, ids)
    picks = [r["removed"] for r in plan["rounds"]]
    assert (
        len(set(picks)) == 3 and sorted(picks) == plan["removed"] == model.config.harness_skip_mlp
    )
    assert picks[0] not in plan["rounds"][1]["scores"] and len(plan["rounds"][2]["scores"]) == 2


def test_scores_are_reusable_across_sizes():
    model, ids = tiny_model(layers=8), calib()
    cfg = DepthPruneConfig(
        criterion="block_influence", num_blocks=1, protect_first=1, protect_last=1
    )
    scores = score_blocks(model, cfg, ids)
    cuts = [select_blocks(scores, n, cfg, 8) for n in range(1, 7)]
    assert all(set(a) < set(b) for a, b in zip(cuts, cuts[1:], strict=False))
    assert cuts[0] == [min(scores, key=scores.get)]

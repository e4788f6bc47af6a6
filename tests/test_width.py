"""Width pruning: physical pruning equals masking, FLAP compensation, ratio solver, streaming
Taylor scores, uneven save/load, and config validation. Tiny models only (fast)."""

from __future__ import annotations

import copy
import json

import pytest
import references
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from harness.models.adapters import adapter_for
from harness.models.params import count_params
from harness.models.shapes import shape_config
from harness.models.tiny import tiny_config, tiny_model
from harness.models.uneven import is_uneven, load_uneven
from harness.pruning.importance.width import score_groups
from harness.pruning.ratio import Geometry, removed_params, solve_counts
from harness.pruning.width import WidthPruneConfig, _compensation, prune_width

IDS = torch.randint(3, 256, (4, 12), generator=torch.Generator().manual_seed(0))
MODELS = {  # every family, at GQA and global scope: test_families.py
    "llama_mha": ("llama", False),
    "llama_gqa": ("llama", True),
}


def cfg_(**kw) -> WidthPruneConfig:
    base = dict(criterion="l2", layer_start=1, layer_end=-1, unit_ratio=0.5)
    return WidthPruneConfig(**{**base, **kw})


def masked_logits(dense, plan, ids, means=None):
    return references.masked_logits(dense, plan, ids, means)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("unit", ["q_head", "kv_group"])
@pytest.mark.parametrize("scope", ["uniform", "global"])
def test_pruned_equals_masked_dense(name, unit, scope):
    arch, gqa = MODELS[name]
    model = tiny_model(arch, gqa=gqa, heads=8 if gqa else 4)  # GQA: 4 groups of 2 q heads
    dense = copy.deepcopy(model)
    plan = prune_width(model, cfg_(criterion="random", attn_unit=unit, scope=scope), IDS)
    assert any(len(k["kept_q_heads"]) < (8 if gqa else 4) for k in plan["layers"].values())
    assert plan["params_after"] == count_params(model)
    assert plan["params_after"]["total"] < plan["params_before"]["total"]
    for i, k in plan["layers"].items():
        attn = adapter_for(model).attention(adapter_for(model).layers(model)[i])
        assert attn.num_key_value_groups * len(k["kept_kv_heads"]) == len(k["kept_q_heads"])
    with torch.no_grad():
        pruned = model(IDS).logits
    torch.testing.assert_close(pruned, masked_logits(dense, plan, IDS), atol=1e-5, rtol=0)
    json.dumps(plan)


def test_flap_compensation_equals_mean_substitution():
    model = tiny_model("llama", gqa=True)
    dense = copy.deepcopy(model)
    cfg = cfg_(criterion="flap", unit_ratio=0.5)
    scores = score_groups(model, cfg, IDS)
    plan = prune_width(model, cfg, IDS, scores=scores)
    means = {(i, "attn"): scores.attn_mean_inp[i] for i in scores.layers}
    means |= {(i, "mlp"): scores.mlp_mean_inp[i] for i in scores.layers}
    layers = adapter_for(model).layers(model)
    assert adapter_for(model).out_proj(layers[1], "attn").bias is not None
    assert adapter_for(model).out_proj(layers[0], "attn").bias is None
    with torch.no_grad():
        pruned = model(IDS).logits
    torch.testing.assert_close(pruned, masked_logits(dense, plan, IDS, means), atol=1e-5, rtol=0)


def test_flap_hand_computed():
    lin = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    comp = _compensation(lin, torch.tensor([0, 2]), torch.tensor([1.0, 10.0, 100.0]))
    assert comp.tolist() == [20.0, 50.0]  # removed column 1 (2, 5) times its mean 10
    # fluctuation metric of MLP channels, computed by hand from the output projection's inputs
    model = tiny_model("llama", gqa=True)
    cfg = cfg_(criterion="flap", prune_attn=False)
    seen = []
    down = adapter_for(model).out_proj(adapter_for(model).layers(model)[1], "mlp")
    h = down.register_forward_pre_hook(
        lambda _m, a: seen.append(a[0].reshape(-1, a[0].shape[-1]))
    )
    scores = score_groups(model, cfg, IDS)
    h.remove()
    x = seen[0].double()
    w = down.weight.double()
    want = x.var(0, unbiased=True) * (w**2).sum(0)
    torch.testing.assert_close(scores.mlp[1], want, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(scores.mlp_mean_inp[1].double(), x.mean(0), rtol=1e-5, atol=1e-6)


def test_ratio_zero_changes_nothing():
    model = tiny_model("qwen2")
    dense = copy.deepcopy(model)
    plan = prune_width(model, cfg_(criterion="taylor", unit_ratio=None, ratio=0.0), IDS)
    assert plan["params_after"] == plan["params_before"] and plan["ratio_achieved"] == 0
    assert not is_uneven(model.config)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, dense(IDS).logits)


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_save_reload_uniform(tmp_path):
    model = tiny_model("qwen2")
    prune_width(model, cfg_(layer_start=0, layer_end=4, attn_unit="kv_group"), IDS)
    assert not is_uneven(model.config) and model.config.num_key_value_heads == 1
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    torch.testing.assert_close(_logits(back), _logits(model), atol=0, rtol=0)


def test_save_reload_uneven_and_strict(tmp_path):
    model = tiny_model("llama", gqa=True, tie=True)
    prune_width(model, cfg_(criterion="flap", scope="global", unit_ratio=0.4), IDS)
    assert is_uneven(model.config)
    model.save_pretrained(tmp_path)
    back = load_uneven(tmp_path, attn_implementation="eager")
    assert back.lm_head.weight is back.model.embed_tokens.weight
    torch.testing.assert_close(_logits(back), _logits(model), atol=0, rtol=0)
    path = tmp_path / "model.safetensors"
    sd = load_file(path)
    names = {id(p): n for n, p in model.named_parameters()}
    added_bias = names[id(adapter_for(model).out_proj(adapter_for(model).layers(model)[1], "mlp").bias)]
    for name, change in (
        ("missing", lambda d: d.pop(added_bias)),
        ("unexpected", lambda d: d.__setitem__("model.layers.0.extra", torch.zeros(2))),
        ("size mismatch", lambda d: d.__setitem__("model.norm.weight", torch.zeros(3))),
    ):
        bad = dict(sd)
        change(bad)
        save_file(bad, path, metadata={"format": "pt"})
        with pytest.raises(ValueError, match=name):
            load_uneven(tmp_path)


def test_generate_with_cache_equals_without():
    model = tiny_model("mistral", gqa=True, heads=8)
    prune_width(model, cfg_(criterion="random", scope="global", unit_ratio=0.3), IDS)
    adapter = adapter_for(model)
    assert len({adapter.attention(m).num_key_value_groups for m in adapter.layers(model)}) > 1
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    a = model.generate(IDS[:2], use_cache=True, **kw)
    b = model.generate(IDS[:2], use_cache=False, **kw)
    assert torch.equal(a, b)


@pytest.mark.parametrize("unit", ["q_head", "kv_group"])
@pytest.mark.parametrize(
    "scope,align", [("uniform", 1), ("uniform", 8), ("global", 1), ("global", 64)]
)
def test_ratio_solver_smollm2_shape(unit, scope, align):
    geo = Geometry.from_config(shape_config("smollm2_135m_shape"), unit)
    assert geo.total == 134_515_008
    for r in (0.05, 0.1, 0.2, 0.3, 0.4):
        cfg = WidthPruneConfig(ratio=r, attn_unit=unit, scope=scope, align=align)
        c = solve_counts(geo, cfg, 24)
        assert (
            abs(removed_params(geo, cfg, 24, c.attn_removed, c.mlp_kept) - r * geo.total)
            <= 0.01 * geo.total
        )
        assert c.mlp_kept % (align * (24 if scope == "uniform" else 1)) == 0


@pytest.mark.parametrize("scope", ["uniform", "global"])
@pytest.mark.parametrize("criterion", ["l1", "flap"])
def test_ratio_achieved_end_to_end(scope, criterion):
    for r in (0.1, 0.25):
        model = tiny_model("llama", gqa=True, layers=6, heads=8)
        cfg = cfg_(criterion=criterion, unit_ratio=None, ratio=r, scope=scope, align=8)
        plan = prune_width(model, cfg, IDS)
        assert abs(plan["ratio_achieved"] - r) <= 0.01
        for k in list(plan["layers"].values())[1:-1]:
            assert len(k["kept_mlp_channels"]) % 8 == 0 and len(k["kept_mlp_channels"]) >= 8


def test_unit_ratio_semantics():
    model = tiny_model("llama", gqa=False)  # MHA: 4 heads, 128 channels
    plan = prune_width(model, cfg_(unit_ratio=0.5), IDS)
    lay = plan["layers"]
    assert [len(lay[i]["kept_q_heads"]) for i in range(4)] == [4, 2, 2, 4]
    assert lay[1]["kept_kv_heads"] == lay[1]["kept_q_heads"]  # MHA q_head = head with its k/v
    assert [len(lay[i]["kept_mlp_channels"]) for i in range(4)] == [128, 64, 64, 128]
    model = tiny_model("llama", gqa=True, heads=8)  # 4 groups of 2: q_head removes 1 per group
    plan = prune_width(model, cfg_(unit_ratio=0.3, align=8), IDS)
    k = plan["layers"][1]
    assert len(k["kept_q_heads"]) == 4 and k["kept_kv_heads"] == [0, 1, 2, 3]
    assert sorted(h // 2 for h in k["kept_q_heads"]) == [0, 1, 2, 3]
    assert len(k["kept_mlp_channels"]) == 88  # round(0.7 * 128 / 8) * 8


def test_scores_reused_across_ratios():
    model = tiny_model("qwen2")
    cfg = cfg_(criterion="taylor")
    scores = score_groups(model, cfg, IDS)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    pa = prune_width(a, cfg, scores=scores)
    pb = prune_width(b, cfg, IDS)
    assert pa["layers"] == pb["layers"]
    with pytest.raises(ValueError, match="scores were computed"):
        prune_width(copy.deepcopy(model), cfg_(criterion="l1"), scores=scores)


def _brute_scores(model, cfg, ids):
    """Taylor-family scores from full gradients, written out member by member."""
    params = list(model.parameters())
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    g = {id(p): p.grad.clone() for p in params}
    fisher = {id(p): torch.zeros_like(p) for p in params}
    for i in range(len(ids)):
        model.zero_grad()
        model(ids[i : i + 1], labels=ids[i : i + 1]).loss.backward()
        for p in params:
            fisher[id(p)] += p.grad ** 2 / len(ids)
    model.zero_grad(set_to_none=True)
    adapter = adapter_for(model)
    out = {}
    for li in range(cfg.layer_start, 3):
        layer = adapter.layers(model)[li]
        mod = {k: piece.module for k, piece in adapter.pieces(layer).items()}
        hd = adapter.shape(layer).head_dim
        kv = cfg.attn_unit == "kv_group"
        size = 2 * hd if kv else hd  # q rows per unit (2 q heads per KV group)
        attn = [(mod["q"].weight, 0, size), (mod["q"].bias, 0, size)]
        if kv:
            for p in ("k", "v"):
                attn += [(mod[p].weight, 0, hd), (mod[p].bias, 0, hd)]
        attn.append((mod["o"].weight, 1, size))
        mlp = [(mod["gate"].weight, 0, 1), (mod["up"].weight, 0, 1), (mod["down"].weight, 1, 1)]
        for kind, members in (("attn", attn), ("mlp", mlp)):
            per_member = []
            for param, axis, size in members:
                w, gr, f = param.detach(), g[id(param)], fisher[id(param)]
                s = {
                    "taylor": (w * gr).abs(),
                    "taylor2": w * f * w,
                    "param_mix": (w * gr - 0.5 * w * f * w).abs(),
                    "vector": w * gr,
                }[cfg.criterion]
                n = (w.shape[axis] if w.dim() == 2 else w.shape[0]) // size
                vals = []
                for u in range(n):
                    sl = slice(u * size, (u + 1) * size)
                    part = s[sl] if axis == 0 else s[:, sl]
                    if cfg.criterion == "vector":
                        part = part.sum(dim=1 - axis).abs() if part.dim() == 2 else part.abs()
                    vals.append(part.sum())
                per_member.append(torch.stack(vals))
            st = torch.stack(per_member).double()
            red = {
                "sum": st.sum(0),
                "mean": st.mean(0),
                "max": st.max(0).values,
                "prod": st.prod(0),
            }
            out[(li, kind)] = red[cfg.reduction]
    return out


STREAM_CASES = [(c, "q_head", "sum") for c in ("taylor", "taylor2", "param_mix", "vector")]
STREAM_CASES += [(c, "kv_group", "max") for c in ("taylor", "taylor2", "param_mix", "vector")]
STREAM_CASES += [("taylor", "q_head", "prod"), ("param_mix", "kv_group", "mean")]


@pytest.mark.parametrize("criterion,unit,reduction", STREAM_CASES)
def test_streaming_scores_equal_brute_force(criterion, unit, reduction):
    model = tiny_model("qwen2", gqa=True, layers=4, hidden=32, heads=4, intermediate=16)
    cfg = cfg_(criterion=criterion, attn_unit=unit, reduction=reduction)
    ids = IDS[:3, :8]
    flags = [p.requires_grad for p in model.parameters()]
    scores = score_groups(model, cfg, ids)
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    brute = _brute_scores(model, cfg, ids)
    for (li, kind), want in brute.items():
        got = getattr(scores, kind)[li]
        torch.testing.assert_close(got, want, rtol=2e-4, atol=1e-12)


def test_invalid_configs_raise():
    llama = tiny_config("llama", gqa=True)
    cases = [
        (dict(criterion="magic"), "criterion='magic' is unknown; choose from random, l1"),
        (dict(reduction="median"), "reduction='median' is unknown"),
        (dict(attn_unit="head"), "attn_unit='head' is unknown; choose from q_head, kv_group"),
        (dict(scope="local"), "scope='local' is unknown"),
        (dict(ratio=0.2), r"exactly one of prune.ratio .* \(got \[.ratio., .unit_ratio.\]\)"),
        (dict(unit_ratio=None), r"exactly one of prune.ratio .*\(got \[\]\)"),
        (dict(unit_ratio=None, ratio=1.0), r"ratio=1.0 must be in \[0, 1\)"),
        (dict(unit_ratio=-0.1), r"unit_ratio=-0.1 must be in \[0, 1\)"),
        (dict(layer_start=4, layer_end=-2), "outside the model's 4 layers"),
        (dict(layer_start=0, layer_end=9), "outside the model's 4 layers"),
        (dict(attn_unit="kv_group", unit_ratio=0.8), "would remove all 2 attention units"),
        (dict(unit_ratio=0.99, prune_attn=False, align=64), "fewer than align=64 MLP channels"),
        (dict(align=48), "align=48 does not divide the MLP size 128"),
        (dict(prune_attn=False, prune_mlp=False), "prune_attn or prune_mlp"),
        (dict(unit_ratio=None, ratio=0.9), "cannot be reached within 1%"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            cfg_(**kw).validate(llama)
    mqa = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=1, vocab_size=256)  # fmt: skip
    with pytest.raises(ValueError, match="kv_group' cannot prune a model with 1 KV head"):
        cfg_(attn_unit="kv_group").validate(mqa)
    cfg_(unit_ratio=None, ratio=0.2).validate(llama)  # a good one passes
    WidthPruneConfig(ratio=0.2, align=64).validate(shape_config("llama2_7b_shape"))
    with pytest.raises(ValueError, match="needs calib_ids"):
        prune_width(tiny_model("llama"), cfg_(criterion="taylor"))


def test_criteria_registry_drives_calibration_selection_and_cache_key():
    from harness.pruning.importance import registry as criteria

    names = criteria.WIDTH_CRITERIA.names()
    assert names[:3] == ("random", "l1", "l2") and "flap" in names
    for name in names:  # a criterion that needs nothing from calibration scores without it
        crit = criteria.WIDTH_CRITERIA.get(name)
        if crit.needs_calibration:
            with pytest.raises(ValueError, match="needs calib_ids"):
                score_groups(tiny_model("llama"), cfg_(criterion=name))
        else:
            score_groups(tiny_model("llama"), cfg_(criterion=name))
    assert [c.name for c in criteria.WIDTH_CRITERIA if c.joint_selection] == ["flap"]
    assert criteria.compensates(cfg_(criterion="flap"))
    assert not criteria.compensates(cfg_(criterion="flap", flap_bias_compensation=False))
    assert not criteria.compensates(cfg_(criterion="wanda_sp"))
    # the seed keys random scores only; the size never keys any
    key = cfg_(criterion="random", seed=1).importance_fields()
    assert key["seed"] == 1 and "unit_ratio" not in key
    assert "seed" not in cfg_(criterion="taylor").importance_fields()
    with pytest.raises(ValueError, match="needs unknown"):
        criteria.WidthCriterion("bad", lambda ctx: None, needs=frozenset({"hessian"}))


def test_a_registered_criterion_prunes_and_keys_its_own_fields():
    from harness.pruning.importance import registry as criteria

    def by_index(ctx):  # keeps the first units: scores rise with the index
        for (i, kind), (n, _) in ctx.slots().items():
            getattr(ctx.out, kind)[i] = torch.arange(n, dtype=torch.float64)

    criteria.register_width(criteria.WidthCriterion("by_index", by_index, key_fields=("align",)))
    try:
        model = tiny_model("llama", gqa=False)
        plan = prune_width(model, cfg_(criterion="by_index", unit_ratio=0.5), IDS)
        assert plan["layers"][1]["kept_q_heads"] == [2, 3]
        assert plan["layers"][1]["kept_mlp_channels"] == list(range(64, 128))
        assert cfg_(criterion="by_index", align=8).importance_fields()["align"] == 8
        with pytest.raises(ValueError, match="registered twice"):
            criteria.register_width(criteria.WidthCriterion("by_index", by_index))
    finally:
        criteria.WIDTH_CRITERIA._entries.pop("by_index")

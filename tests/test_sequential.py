"""Block-by-block scoring (harness.pruning.importance.sequential) gives exactly the whole-model scores.

The references below are the whole-model implementations the harness used before: one full
forward with hooks recording every block boundary and every output projection's input.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.models.adapters import adapter_for
from harness.models.tiny import tiny_model
from harness.pruning.blocks import count_block_forwards
from harness.pruning.importance.depth import angular_scores, block_influence_scores, candidates
from harness.pruning.importance.sequential import block_inputs, walk
from harness.pruning.importance.width import score_groups
from harness.pruning.width import WidthPruneConfig

MODELS = [("llama", True), ("llama", False), ("qwen2", True)]


def calib(n: int = 4, seq: int = 24) -> torch.Tensor:
    return torch.randint(3, 250, (n, seq), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def whole_model_trace(model, ids):
    """Every block's input, post-attention residual and output from one full forward."""
    adapter, hidden, mids, outs, handles = adapter_for(model), [], [], [], []
    for layer in adapter.layers(model):
        handles.append(layer.register_forward_pre_hook(
            lambda _m, args, kwargs: hidden.append(args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True))
        handles.append(adapter.mid_module(layer).register_forward_pre_hook(
            lambda _m, args: mids.append(args[0])))
        handles.append(layer.register_forward_hook(lambda _m, _a, out: outs.append(out)))
    try:
        adapter.backbone(model)(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return hidden, mids, outs


@torch.no_grad()
def whole_model_projection_inputs(model, ids):
    """{(layer, kind): (count, sum x, sum x^2)} of o_proj/down_proj inputs from a full forward."""
    adapter, stats, handles = adapter_for(model), {}, []
    for i, layer in enumerate(adapter.layers(model)):
        for kind in ("attn", "mlp"):
            def pre(_m, args, key=(i, kind)):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                stats[key] = (x.shape[0], x.sum(0), x.square().sum(0))
            handles.append(adapter.out_proj(layer, kind).register_forward_pre_hook(pre))
    try:
        model(ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats


@pytest.mark.parametrize("arch, gqa", MODELS)
def test_walk_reproduces_every_block_boundary_running_each_block_once(arch, gqa):
    model, ids = tiny_model(arch, gqa=gqa, layers=6), calib()
    hidden, _, outs = whole_model_trace(model, ids)
    with count_block_forwards(model) as counter:
        steps = list(walk(model, ids, torch.device("cpu")))
    assert counter.count == 6  # the pass-through forward that collects block inputs runs none
    for (i, h_in, h_out), want_in, want_out in zip(steps, hidden, outs, strict=True):
        assert torch.equal(h_in, want_in) and torch.equal(h_out, want_out), i
    first, kwargs = block_inputs(model, ids, torch.device("cpu"))
    assert torch.equal(first, hidden[0]) and len(kwargs) == 6


@pytest.mark.parametrize("arch, gqa", MODELS)
@pytest.mark.parametrize("unit", ["block", "attn", "mlp"])
def test_block_influence_equals_the_whole_model_trace(arch, gqa, unit):
    model, ids = tiny_model(arch, gqa=gqa, layers=6), calib()
    hidden, mids, outs = whole_model_trace(model, ids)
    cands = candidates(model, unit, 1, 1)
    ends = {"block": lambda i: (hidden[i], outs[i]), "attn": lambda i: (hidden[i], mids[i]),
            "mlp": lambda i: (mids[i], outs[i])}[unit]
    want = {i: 1.0 - F.cosine_similarity(*(t.float() for t in ends(i)), dim=-1).mean().item()
            for i in cands}
    assert block_influence_scores(model, ids, cands, unit) == want


@pytest.mark.parametrize("n", [1, 2, 3])
def test_angular_equals_the_whole_model_trace(n):
    model, ids = tiny_model("llama", layers=7), calib()
    hidden, _, outs = whole_model_trace(model, ids)
    bounds = [*hidden, outs[-1]]
    cands = candidates(model, "block", 1, 1)
    want = {}
    for s in cands:
        if all(j in cands for j in range(s, s + n)):
            cos = F.cosine_similarity(bounds[s].float(), bounds[s + n].float(), dim=-1)
            want[s] = (torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi).mean().item()
    assert angular_scores(model, ids, cands, n) == want


@pytest.mark.parametrize("arch, gqa", MODELS)
@pytest.mark.parametrize("criterion", ["flap", "wanda_sp"])
def test_activation_width_scores_equal_whole_model_statistics(arch, gqa, criterion):
    model, ids = tiny_model(arch, gqa=gqa, layers=6), calib()
    cfg = WidthPruneConfig(criterion=criterion, unit_ratio=0.25, layer_start=1, layer_end=-1)
    got = score_groups(model, cfg, ids)
    stats, adapter = whole_model_projection_inputs(model, ids), adapter_for(model)
    for i in got.layers:
        layer = adapter.layers(model)[i]
        for kind in ("attn", "mlp"):
            cnt, s1, s2 = stats[(i, kind)]
            w = adapter.out_proj(layer, kind).weight.detach().double()
            n = adapter.members(layer, kind, got.attn_unit)[0]
            if criterion == "wanda_sp":
                want = (w.abs() * (s2 / len(ids)).sqrt()).mean(0).reshape(n, -1).sum(1)
            else:
                col = (s2 - s1.square() / cnt) / (cnt - 1) * w.square().sum(0)
                col = col.square() if kind == "attn" else col
                want = col.reshape(n, -1).mean(1)
                assert torch.equal(getattr(got, f"{kind}_mean_inp")[i], (s1 / cnt).float())
                assert getattr(got, f"{kind}_stats")[i] == (col.mean().item(), col.std().item())
            assert torch.equal(getattr(got, kind)[i], want), (i, kind)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_recomputed_blocks_leave_gradient_scores_bitwise_unchanged(arch, monkeypatch):
    """Gradient criteria keep one block's activations at a time (recomputed in the backward
    pass); the scores are those of the backward that keeps them all."""
    from contextlib import nullcontext

    from harness.pruning.importance import grads
    from harness.pruning.importance.depth import taylor_scores

    model, ids = tiny_model(arch, layers=5), calib()
    cfgs = {c: WidthPruneConfig(criterion=c, unit_ratio=0.25, layer_start=1, layer_end=-1)
            for c in ("taylor", "taylor2", "vector", "param_mix")}

    def all_scores():
        calls = []  # MLP forwards: the recomputation calls the block's forward directly
        hooks = [adapter_for(model).mlp(layer).register_forward_pre_hook(
            lambda _m, _a: calls.append(1)) for layer in adapter_for(model).layers(model)]
        try:
            width = {c: score_groups(model, cfg, ids) for c, cfg in cfgs.items()}
            depth = taylor_scores(model, ids, candidates(model, "block", 1, 1))
        finally:
            for h in hooks:
                h.remove()
        return width, depth, len(calls)

    recomputed = all_scores()
    monkeypatch.setattr(grads, "recomputed_blocks", lambda model: nullcontext())
    kept = all_scores()
    assert recomputed[2] > kept[2]  # the backward passes really ran the blocks again
    assert recomputed[1] == kept[1]
    for c in cfgs:
        a, b = recomputed[0][c], kept[0][c]
        for i in a.layers:
            assert torch.equal(a.attn[i], b.attn[i]) and torch.equal(a.mlp[i], b.mlp[i]), (c, i)

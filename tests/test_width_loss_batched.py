"""The batched measured-loss criterion chooses exactly what the unbatched reference chooses:
same scores to float rounding and the same kept units, on tiny Llama, Qwen2 and Gemma 3 models,
for KV groups and query-head slots, with the streams stacked in one chunk or in several."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.models.tiny import tiny_model
from harness.pruning.blocks import count_block_forwards
from harness.pruning.importance import width_loss
from harness.pruning.importance.registry import WIDTH_CRITERIA, WidthCriterion, register_width
from harness.pruning.importance.width import score_groups
from harness.pruning.width import WidthPruneConfig, prune_width

IDS = torch.randint(3, 256, (3, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", autouse=True)
def reference_criterion():
    """The unbatched original, registered under its own name for the comparison."""
    register_width(WidthCriterion("loss_reference", width_loss.measured_loss_scores_reference,
                                  needs=frozenset({"losses"}), scores_mlp=False))
    yield
    WIDTH_CRITERIA._entries.pop("loss_reference")


def _cfg(criterion, unit, scope):
    return WidthPruneConfig(criterion=criterion, attn_unit=unit, scope=scope, ratio=0.25,
                            layer_start=1, layer_end=-1, mlp_criterion="l2")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("unit", ["kv_group", "q_head"])
@pytest.mark.parametrize("stream_batch", [64, 6], ids=["one_chunk", "chunked"])
def test_batched_scores_and_choices_equal_the_reference(arch, unit, stream_batch, monkeypatch):
    monkeypatch.setattr(width_loss, "STREAM_BATCH", stream_batch)
    monkeypatch.setattr(width_loss, "HEAD_BATCH", 2)
    model = tiny_model(arch, gqa=True, heads=8, layers=6)
    with count_block_forwards(model) as new_count:
        new = score_groups(model, _cfg("loss", unit, "global"), IDS)
    with count_block_forwards(model) as ref_count:
        ref = score_groups(model, _cfg("loss_reference", unit, "global"), IDS)
    assert new.layers == ref.layers and set(new.attn) == set(ref.attn)
    for i in ref.attn:
        assert len(new.attn[i]) == len(ref.attn[i]) >= 2
        torch.testing.assert_close(new.attn[i], ref.attn[i], atol=1e-6, rtol=1e-5)
        assert torch.equal(torch.argsort(new.attn[i]), torch.argsort(ref.attn[i]))
    assert new_count.count < ref_count.count  # stacked (2+ streams a chunk): fewer, larger calls
    for scope in ("uniform", "global"):
        a, b = copy.deepcopy(model), copy.deepcopy(model)
        plan_new = prune_width(a, _cfg("loss", unit, scope), IDS)
        plan_ref = prune_width(b, _cfg("loss_reference", unit, scope), IDS)
        assert plan_new["layers"] == plan_ref["layers"]
        assert plan_new["ratio_achieved"] == plan_ref["ratio_achieved"]

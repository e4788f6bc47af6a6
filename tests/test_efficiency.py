"""Efficiency figures (params, bytes, analytic FLOPs) and the speed benchmark, on tiny models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness.evaluation import speed
from harness.evaluation.config import SpeedConfig
from harness.evaluation.efficiency import (
    decode_weight_bytes,
    efficiency_metrics,
    flops_breakdown,
    flops_per_token,
    kv_cache_bytes,
    weight_bytes,
)
from harness.models.adapters import adapter_for
from harness.models.tiny import tiny_model
from harness.pruning.blocks import remove_blocks


def uneven_model(arch: str = "llama") -> nn.Module:
    """tiny_model with layer 1 width-pruned: 2 of 4 query heads, 1 of 2 KV heads, 48 of 128 MLP."""
    model = tiny_model(arch)
    adapter = adapter_for(model)
    layer = adapter.layers(model)[1]
    adapter.prune_attention(layer, [0, 1], [0])
    adapter.prune_mlp(layer, range(48))
    return model.eval()


def depth_pruned_model() -> nn.Module:
    """tiny_model with layer 2 of 4 removed."""
    return remove_blocks(tiny_model("llama"), [2]).eval()


def _counted_flops(model: nn.Module, batch: int, seq: int) -> int:
    ids = torch.randint(3, 256, (batch, seq), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ids)
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "name, build",
    [
        ("dense", lambda: tiny_model("llama")),
        ("dense_mha_tied", lambda: tiny_model("llama", gqa=False, tie=True)),
        ("qwen2_bias", lambda: tiny_model("qwen2")),
        ("uneven", uneven_model),
        ("depth", depth_pruned_model),
    ],
)
@pytest.mark.parametrize("batch, seq", [(1, 7), (2, 16)])
def test_analytic_flops_equal_flop_counter(name, build, batch, seq):
    # Counted: matmuls (Linear layers incl. LM head, QK^T, PV); not norms/softmax/act/bias/RoPE.
    model = build()
    assert _counted_flops(model, batch, seq) == batch * seq * flops_per_token(model, seq)


def test_flops_by_hand():
    seq = 10
    dense = flops_breakdown(tiny_model("llama"), seq)
    # per layer: q,o 64x64; k,v 64x32; gate, up, down 64x128; 4 layers; head 64x256
    assert dense["attn_proj"] == 4 * 2 * (2 * 64 * 64 + 2 * 64 * 32)
    assert dense["mlp"] == 4 * 2 * 3 * 64 * 128
    assert dense["attention"] == 4 * 2 * 2 * 64 * seq
    assert dense["lm_head"] == 2 * 64 * 256
    uneven = flops_breakdown(uneven_model(), seq)
    assert dense["attn_proj"] - uneven["attn_proj"] == 2 * (2 * 64 * 32 + 2 * 64 * 16)
    assert dense["mlp"] - uneven["mlp"] == 2 * 3 * 64 * (128 - 48)
    assert dense["attention"] - uneven["attention"] == 2 * 2 * 32 * seq
    depth = flops_breakdown(depth_pruned_model(), seq)
    assert depth["mlp"] == 3 * 2 * 3 * 64 * 128


def test_weight_and_kv_bytes():
    model = tiny_model("llama")  # untied, fp32
    n = sum(p.numel() for p in model.parameters())
    assert weight_bytes(model) == 4 * n
    assert decode_weight_bytes(model) == 4 * (n - 256 * 64)  # no input-embedding table read
    tied = tiny_model("llama", tie=True)
    assert weight_bytes(tied) == 4 * (n - 256 * 64) == decode_weight_bytes(tied)
    assert weight_bytes(model.to(torch.bfloat16)) == 2 * n
    # K+V: 4 layers x 2 x (2 kv heads x 16) = 256 values per token
    assert kv_cache_bytes(tiny_model("llama"), context=10, batch=3) == 256 * 10 * 3 * 4
    assert kv_cache_bytes(uneven_model(), context=1) == (256 - 2 * 16) * 4
    assert kv_cache_bytes(depth_pruned_model(), context=1, dtype_bytes=2) == 192 * 2
    metrics = efficiency_metrics(uneven_model(), seq_len=32)
    assert metrics["efficiency/num_layers"] == 4
    assert metrics["efficiency/flops_per_token"] == flops_per_token(uneven_model(), 32)


# ---------------------------------------------------------------- speed benchmark

TINY_SPEED = dict(batch_sizes=[1, 2], output_lengths=[3], prompt_len=5, warmup=1, repeats=2)


@pytest.mark.parametrize("backend", ["hf", "static"])
def test_speed_rows(backend):
    cfg = SpeedConfig(enabled=True, backend=backend, compile=False, **TINY_SPEED)
    rows = speed.benchmark_speed(tiny_model("llama"), cfg)
    assert [(r["batch_size"], r["output_len"]) for r in rows] == [(1, 3), (2, 3)]
    for r in rows:
        assert set(r) == set(speed.ROW_KEYS)
        assert r["device"] == "cpu" and r["backend"] == backend and r["oom"] is False
        assert r["peak_alloc_gib"] is None  # CPU: not measured
        assert r["e2e_ms"] > 0 and r["prefill_ms"] > 0 and r["device_bw_gbs"] > 0
        assert r["e2e_ms_min"] <= r["e2e_ms"] <= r["e2e_ms_max"]
    assert rows[1]["bytes_per_step"] - rows[0]["bytes_per_step"] == 256 * (5 + 1.5) * 4
    flat = speed.speed_metrics(rows)
    assert flat[f"speed/{backend}/bs2/out3/oom"] == 0
    assert flat[f"speed/{backend}/bs1/out3/e2e_ms"] == rows[0]["e2e_ms"]


@pytest.mark.parametrize(
    "build",
    [lambda: tiny_model("llama"), uneven_model, depth_pruned_model, lambda: tiny_model("qwen2")],
)
def test_static_backend_matches_generate(build):
    model = build()
    ids = speed._random_prompts(model, 3, 6, seed=1)
    expected = speed.hf_generate(model, ids, 9)
    decoder = speed.StaticDecoder(model, max_len=16, compile=False)
    assert torch.equal(decoder(ids, 9), expected)
    assert torch.equal(decoder(ids, 9), expected)  # the cache resets between runs
    assert expected.shape == (3, 9)


def test_oom_row_and_sweep_goes_on(monkeypatch):
    real = speed._random_prompts

    def prompts(model, batch, prompt_len, seed):
        if batch == 64:
            raise torch.OutOfMemoryError("simulated")
        return real(model, batch, prompt_len, seed)

    monkeypatch.setattr(speed, "_random_prompts", prompts)
    cfg = SpeedConfig(backend="hf", batch_sizes=[1, 64, 2], output_lengths=[2, 3], prompt_len=4,
                      warmup=0, repeats=1)  # fmt: skip
    rows = speed.benchmark_speed(tiny_model("llama"), cfg)
    assert [(r["batch_size"], r["oom"]) for r in rows] == [
        (1, False), (1, False), (64, True), (64, True), (2, False), (2, False),
    ]  # fmt: skip
    assert rows[2]["decode_ms"] is None and rows[4]["decode_ms"] is not None
    assert speed.speed_metrics(rows)["speed/hf/bs64/out2/oom"] == 1


@pytest.mark.parametrize(
    "kw",
    [
        {"backend": "vllm"},
        {"batch_sizes": [1, 0]},
        {"batch_sizes": []},
        {"batch_sizes": [1.5]},
        {"output_lengths": [1]},
        {"prompt_len": 0},
        {"repeats": 0},
        {"warmup": -1},
    ],
)
def test_bad_speed_config(kw):
    with pytest.raises(ValueError, match="speed."):
        SpeedConfig(**kw).validate()

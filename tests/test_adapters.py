"""Architecture adapters: the registry, its one-line refusal, and what every family shares."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config

from harness.models.adapters import adapter_for, supported
from harness.models.adapters.base import LLAMA_PROJECTIONS
from harness.models.loader import ModelConfig, load_hf_config, load_model
from harness.models.tiny import tiny_model


def test_unknown_model_type_fails_in_one_line_before_any_weights_load(tmp_path):
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)  # config only, no weights
    for call in (load_hf_config, load_model):
        with pytest.raises(ValueError, match="unsupported architecture 'gpt2'; supported model "
                                             "types: .*llama.*qwen2") as err:
            call(ModelConfig(path=str(tmp_path)))
        assert "\n" not in str(err.value)
    assert {"llama", "mistral", "qwen2"} <= set(supported())


def test_llama_lora_targets_are_the_projection_names():
    adapter = adapter_for(tiny_model("llama"))
    assert adapter.lora_targets(LLAMA_PROJECTIONS) == list(LLAMA_PROJECTIONS)
    assert adapter.lora_targets(["q_proj", "q_proj", "lm_head"]) == ["q_proj", "lm_head"]


def test_shape_and_members_of_a_qwen2_layer():
    model = tiny_model("qwen2")  # hidden 64, 4 query heads, 2 KV heads of 16, MLP 128, biases
    adapter = adapter_for(model)
    layer = adapter.layers(model)[0]
    s = adapter.shape(layer)
    assert (s.hidden, s.n_q, s.n_kv, s.head_dim, s.inter) == (64, 4, 2, 16, 128)
    assert (s.o_bias, s.down_bias) == (False, False)
    n, members = adapter.members(layer, "attn", "kv_group")  # q, k, v rows with biases; o cols
    assert n == 2 and sum(m.numel for m in members) == 2 * (2 * 16 * 65 + 2 * 16 * 65 + 2 * 16 * 64)
    n, members = adapter.members(layer, "mlp", "q_head")
    assert n == 128 and sum(m.numel for m in members) == 128 * 3 * 64
    w = members[0].param
    assert torch.equal(members[0].take(w), w)


def test_fused_families_map_lora_targets_onto_their_fused_modules():
    adapter = adapter_for(tiny_model("phi3"))
    assert adapter.lora_targets(LLAMA_PROJECTIONS) == [
        "qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert adapter.lora_targets(["k_proj"]) == ["qkv_proj"]


def test_soft_capped_attention_loads_eagerly():
    gemma2, gemma3 = tiny_model("gemma2").config, tiny_model("gemma3").config
    assert adapter_for(gemma2).attn_implementation(gemma2, "sdpa") == "eager"
    assert adapter_for(gemma3).attn_implementation(gemma3, "sdpa") == "sdpa"
    assert adapter_for(gemma3).needs_bos and not adapter_for(tiny_model("llama")).needs_bos

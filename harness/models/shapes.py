"""Shape-only model configs: real architectures with random weights, for speed and memory work.

Numbers from these models are flagged `shape_only` in every result: never read accuracy from them.
"""

from __future__ import annotations

from transformers import LlamaConfig

SHAPES: dict[str, dict] = {
    "llama2_7b_shape": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
        max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
    ),
    "llama3_8b_shape": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
    ),
    "llama_1b_shape": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
        max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
    ),
    "smollm2_135m_shape": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
        max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
}


def shape_config(name: str) -> LlamaConfig:
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose from {sorted(SHAPES)}")
    kw = dict(SHAPES[name])
    rope_theta = kw.pop("rope_theta")
    cfg = LlamaConfig(**kw, bos_token_id=1, eos_token_id=2)
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    return cfg

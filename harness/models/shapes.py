"""Shape-only model configs: real architectures with random weights, for speed and memory work.

Numbers from these models are flagged `shape_only` in every result: never read accuracy from them.
"""

from __future__ import annotations

from transformers import LlamaConfig


def _llama(hidden, inter, layers, heads, kv, vocab, positions, rope_theta, **extra) -> dict:
    return dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                max_position_embeddings=positions, rope_theta=rope_theta, rms_norm_eps=1e-5,
                **extra)


SHAPES: dict[str, dict] = {
    "llama2_7b_shape": _llama(4096, 11008, 32, 32, 32, 32000, 4096, 10000.0),
    "llama3_8b_shape": _llama(4096, 14336, 32, 32, 8, 128256, 8192, 500000.0),
    "llama_1b_shape": _llama(2048, 5632, 16, 32, 8, 32000, 4096, 10000.0),
    "smollm2_135m_shape": _llama(576, 1536, 30, 9, 3, 49152, 8192, 100000.0,
                                 tie_word_embeddings=True),
}


def shape_config(name: str) -> LlamaConfig:
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose from {sorted(SHAPES)}")
    kw = dict(SHAPES[name])
    rope_theta = kw.pop("rope_theta")
    cfg = LlamaConfig(**kw, bos_token_id=1, eos_token_id=2)
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    return cfg

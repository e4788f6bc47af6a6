"""Tiny random Llama-family models, built in-process for fast unit tests.

`tiny_model("llama", gqa=True)` gives a 4-layer model with hidden size 64. Weights are random
but seeded, so every test sees the same model.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
)

ARCHS = ("llama", "mistral", "qwen2")


def tiny_config(
    arch: str = "llama",
    gqa: bool = True,
    layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    intermediate: int = 128,
    vocab: int = 256,
    tie: bool = False,
) -> PretrainedConfig:
    """Config of a tiny model: `gqa` gives 2 KV heads for 4 query heads, else MHA."""
    kv = heads // 2 if gqa else heads
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if arch == "qwen2":
        return Qwen2Config(**common)  # qwen2 has q/k/v biases
    raise ValueError(f"unknown tiny arch {arch!r}; choose from {ARCHS}")


def tiny_model(arch: str = "llama", gqa: bool = True, seed: int = 0, **kw) -> torch.nn.Module:
    """A seeded random tiny model in fp32 eval mode, with non-zero biases where the arch has them."""
    torch.manual_seed(seed)
    cfg = tiny_config(arch, gqa, **kw)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.02)
    return model.eval()


def tiny_tokenizer():
    """A byte-level tokenizer with 256 ids (one per byte, no merges) to pair with tiny models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=sorted(alphabet)[1], eos_token=sorted(alphabet)[2],
        pad_token=sorted(alphabet)[0],
    )

"""Tiny random models of every supported family, built in-process for fast unit tests.

`tiny_model("llama", gqa=True)` gives a 4-layer model with hidden size 64 (4 query heads of 16).
Weights are random but seeded, so every test sees the same model. `FAMILIES` lists one tiny
config per adapter; the family-parametrized equivalence tests run over all of them, so a new
family needs one entry in `CONFIGS` here.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

ARCHS = ("llama", "mistral", "qwen2")  # Llama's module layout

# Gemma: sliding (window 6) and global layers alternate, scores and logits soft-capped.
def _gemma(head_dim: int) -> dict:
    return dict(head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=6)


# One tiny config per family: (fields shared by all, head_dim) -> config.
CONFIGS = {
    "llama": lambda common, hd: LlamaConfig(**common),
    "mistral": lambda common, hd: MistralConfig(**common, sliding_window=None),
    "qwen2": lambda common, hd: Qwen2Config(**common),  # q/k/v biases
    "qwen3": lambda common, hd: Qwen3Config(**common, head_dim=hd),  # per-head q/k norms
    "gemma2": lambda common, hd: Gemma2Config(**common, **_gemma(hd)),
    "gemma3": lambda common, hd: Gemma3TextConfig(**common, **_gemma(hd), sliding_window_pattern=2,
                                                  final_logit_softcapping=30.0),
    "phi3": lambda common, hd: Phi3Config(**common),  # fused qkv and gate_up
    "olmo2": lambda common, hd: Olmo2Config(**common),  # post-norms, q/k norms over the projection
    "granite": lambda common, hd: GraniteConfig(  # scalar multipliers, none of them 1
        **common, embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2,
        logits_scaling=4.0),
}
FAMILIES = tuple(CONFIGS)


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
    if arch not in CONFIGS:
        raise ValueError(f"unknown tiny arch {arch!r}; choose from {', '.join(FAMILIES)}")
    return CONFIGS[arch](common, hidden // heads)


def tiny_model(arch: str = "llama", gqa: bool = True, seed: int = 0, **kw) -> torch.nn.Module:
    """A seeded random tiny model in fp32 eval mode, with non-zero biases where the arch has them
    and norm weights that are not all alike (so a misplaced norm shows)."""
    torch.manual_seed(seed)
    cfg = tiny_config(arch, gqa, **kw)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.02)
            elif p.dim() == 1:
                p.add_(torch.randn_like(p), alpha=0.1)
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

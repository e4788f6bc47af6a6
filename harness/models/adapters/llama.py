"""Llama (Llama 1/2/3, SmolLM2; GQA or MHA, tied or untied embeddings): the base layout."""

from harness.models.adapters import register
from harness.models.adapters.base import DecoderAdapter


@register("llama")
class LlamaAdapter(DecoderAdapter):
    """Pre-norm blocks: input_layernorm -> attention, post_attention_layernorm -> MLP."""

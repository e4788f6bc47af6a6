"""Qwen3: Llama's layout plus q/k RMSNorms over one head's dimension, shared by all heads (so
nothing of them goes when heads go)."""

from harness.models.adapters import register
from harness.models.adapters.base import DecoderAdapter


@register("qwen3")
class Qwen3Adapter(DecoderAdapter):
    """Same modules as Llama; q_norm/k_norm are per-head-dim weights inside the attention."""

"""Qwen2: Llama's layout with q/k/v biases (sliced with their rows; o_proj has none, so FLAP's
compensation creates one)."""

from harness.models.adapters import register
from harness.models.adapters.base import DecoderAdapter


@register("qwen2")
class Qwen2Adapter(DecoderAdapter):
    """Biases are found on the modules themselves; nothing to override."""

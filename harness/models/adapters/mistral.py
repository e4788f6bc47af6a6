"""Mistral: Llama's layout; its sliding window is one config value for every layer."""

from harness.models.adapters import register
from harness.models.adapters.base import DecoderAdapter


@register("mistral")
class MistralAdapter(DecoderAdapter):
    """Same modules as Llama."""

"""Gemma 3 (text, `gemma3_text`): Gemma 2's sandwich norms, soft-capping, sliding/global
`layer_types`, scaled embeddings and BOS, plus q/k norms over one head's dimension (shared by
all heads, so nothing of them goes when heads go)."""

from harness.models.adapters import register
from harness.models.adapters.gemma2 import Gemma2Adapter


@register("gemma3_text")
class Gemma3Adapter(Gemma2Adapter):
    """Same layout as Gemma 2."""

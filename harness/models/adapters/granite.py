"""IBM Granite (`granite`): Llama's layout with four scalar multipliers. Three act inside what the
harness keeps whole (the embedding's `embedding_multiplier` in the backbone's forward, each
sublayer's output times `residual_multiplier` before the residual add, `attention_multiplier` as
the score scale), so a removed sublayer (zero output) and FLAP's bias (scaled with its
projection's output) stay exact; only logits built outside the model need `logits_scaling`."""

from harness.models.adapters import register
from harness.models.adapters.base import DecoderAdapter, unwrap


@register("granite")
class GraniteAdapter(DecoderAdapter):
    def logits(self, model, hidden):
        return super().logits(model, hidden) / unwrap(model).config.logits_scaling

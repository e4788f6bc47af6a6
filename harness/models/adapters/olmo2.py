"""OLMo 2: post-norms only, and q/k RMSNorms over the whole q / k projection.

- No pre-norms: attention owns `post_attention_layernorm` (on its output), the MLP owns
  `post_feedforward_layernorm`; the residual between them is the MLP's own input.
- `q_norm` / `k_norm` have one weight per q / k channel, so they are pieces sliced with their
  heads (and members of a head's score). Their RMS runs over the kept heads only, so removing a
  head renormalises the others: the equivalence tests mask with exactly that renormalisation.
"""

from harness.models.adapters import register
from harness.models.adapters.base import DecoderAdapter, Piece


@register("olmo2")
class Olmo2Adapter(DecoderAdapter):
    attn_norms = ("post_attention_layernorm",)
    mlp_norms = ("post_feedforward_layernorm",)
    mid_name = "mlp"

    def pieces(self, layer):
        out = super().pieces(layer)
        if "q" in out:
            a = self.attention(layer)
            out["q_norm"] = Piece(a, "q_norm", 0, 0, out["q"].size)
            out["k_norm"] = Piece(a, "k_norm", 0, 0, out["k"].size)
        return out

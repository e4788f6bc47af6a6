"""Gemma 2: sandwich norms, soft-capping, alternating sliding/global layers, scaled embeddings.

- Attention owns `input_layernorm` (before it) and `post_attention_layernorm` (on its output);
  the MLP owns `pre_feedforward_layernorm` and `post_feedforward_layernorm`. So the residual
  between the two sublayers enters `pre_feedforward_layernorm`.
- Final logits are soft-capped (`final_logit_softcapping`); attention scores too, which only the
  eager kernel implements, so it is loaded eagerly when the config caps them.
- `config.layer_types` (sliding/full per layer) is cut with the blocks; each layer's attention
  keeps its own type. The sqrt(hidden) embedding scale lives in the embedding module.
- Gemma was trained with a leading BOS token; perplexity windows get one (not scored).
"""

import torch

from harness.models.adapters import register
from harness.models.adapters.base import DecoderAdapter, unwrap


@register("gemma2")
class Gemma2Adapter(DecoderAdapter):
    attn_norms = ("input_layernorm", "post_attention_layernorm")
    mlp_norms = ("pre_feedforward_layernorm", "post_feedforward_layernorm")
    mid_name = "pre_feedforward_layernorm"
    needs_bos = True

    def logits(self, model, hidden):
        logits = super().logits(model, hidden)
        cap = getattr(unwrap(model).config, "final_logit_softcapping", None)
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def attn_implementation(self, config, requested: str) -> str:
        return "eager" if getattr(config, "attn_logit_softcapping", None) else requested

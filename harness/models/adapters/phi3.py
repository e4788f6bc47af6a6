"""Phi-3: fused `qkv_proj` (rows q | k | v) and `gate_up_proj` (rows gate | up).

The pieces below tell the rest of the harness where q, k, v, gate and up sit inside the fused
weights, so scoring, surgery, the ratio solver and the uneven loader cut them like separate
projections. Phi-3's attention splits its fused output with `config.num_attention_heads`, so a
layer whose head count differs from the model config gets a config view with its own count.
"""

from harness.models.adapters import register
from harness.models.adapters.base import DecoderAdapter, Piece, features


class LayerConfig:
    """The model config as one attention module sees it, with its own query-head count."""

    def __init__(self, base, num_attention_heads: int):
        self.__dict__.update(_base=base, num_attention_heads=num_attention_heads)

    def __getattr__(self, name):  # only for what this view does not hold itself
        if name.startswith("__") or name == "_base":
            raise AttributeError(name)
        return getattr(self._base, name)


@register("phi3")
class Phi3Adapter(DecoderAdapter):
    fused = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}

    def pieces(self, layer):
        out = {}
        if self.has(layer, "attn"):
            a = self.attention(layer)
            q = features(a.o_proj, 1)
            kv = (features(a.qkv_proj, 0) - q) // 2
            out.update(q=Piece(a, "qkv_proj", 0, 0, q), k=Piece(a, "qkv_proj", 0, q, kv),
                       v=Piece(a, "qkv_proj", 0, q + kv, kv), o=Piece(a, "o_proj", 1, 0, q))
        if self.has(layer, "mlp"):
            m = self.mlp(layer)
            inter = features(m.down_proj, 1)
            out.update(gate=Piece(m, "gate_up_proj", 0, 0, inter),
                       up=Piece(m, "gate_up_proj", 0, inter, inter),
                       down=Piece(m, "down_proj", 1, 0, inter))
        return out

    def after_attention_resized(self, attn, n_q: int, n_kv: int) -> None:
        super().after_attention_resized(attn, n_q, n_kv)
        attn.num_key_value_heads = n_kv
        base = attn.config._base if isinstance(attn.config, LayerConfig) else attn.config
        attn.config = base if n_q == base.num_attention_heads else LayerConfig(base, n_q)

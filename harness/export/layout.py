"""What each decoder layer of a (pruned) model keeps, read through the family adapter.

`plan_layers(model)` gives one `LayerPlan` per decoder layer; the exporters map these onto an
engine's per-layer fields (llama.cpp `deci` arrays, vLLM `block_configs`) or refuse in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.models.adapters import adapter_for


@dataclass(frozen=True)
class LayerPlan:
    index: int  # the layer's index in the model
    attn: bool  # attention kept
    mlp: bool  # MLP kept
    n_q: int  # query heads (0 when attention removed)
    n_kv: int
    n_ff: int  # MLP channels (0 when MLP removed)
    o_bias: bool  # attention output bias (FLAP compensation)
    down_bias: bool  # MLP output bias (FLAP compensation)
    qkv_bias: bool  # Qwen2's q/k/v biases

    @property
    def empty(self) -> bool:
        return not (self.attn or self.mlp)


def plan_layers(model) -> list[LayerPlan]:
    adapter = adapter_for(model)
    out = []
    for i, layer in enumerate(adapter.layers(model)):
        pieces = adapter.pieces(layer)
        attn, mlp = adapter.has(layer, "attn"), adapter.has(layer, "mlp")
        hd = head_dim(model)
        out.append(LayerPlan(
            index=i, attn=attn, mlp=mlp,
            n_q=pieces["q"].size // hd if attn else 0, n_kv=pieces["k"].size // hd if attn else 0,
            n_ff=pieces["gate"].size if mlp else 0,
            o_bias=attn and pieces["o"].module.bias is not None,
            down_bias=mlp and pieces["down"].module.bias is not None,
            qkv_bias=attn and pieces["q"].module.bias is not None,
        ))
    return out


def head_dim(model) -> int:
    cfg = model.config
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def uniform(plans: list[LayerPlan]) -> bool:
    """Every layer whole, alike, and without output biases: a stock fixed-shape arch holds it."""
    first = plans[0]
    return all(p.attn and p.mlp and not (p.o_bias or p.down_bias)
               and (p.n_q, p.n_kv, p.n_ff) == (first.n_q, first.n_kv, first.n_ff) for p in plans)

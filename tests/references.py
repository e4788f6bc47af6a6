"""Reference computations for equivalence tests: the dense model with units bypassed, zeroed or
masked by hooks, reaching modules only through the family's adapter."""

from __future__ import annotations

import torch

from harness.models.adapters import adapter_for
from harness.models.adapters.base import head_rows


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def skipped_logits(model, ids, blocks=(), unit="block"):
    """Logits with `blocks` bypassed, or their attention / MLP output zeroed (`unit`)."""
    adapter, handles = adapter_for(model), []
    for i in blocks:
        layer = adapter.layers(model)[i]
        if unit == "block":
            h = layer.register_forward_hook(lambda m, args, out: args[0])
        elif unit == "attn":  # zero output; a post-norm maps it to zero too
            h = adapter.attention(layer).register_forward_hook(
                lambda m, a, out: (torch.zeros_like(out[0]), out[1]))
        else:
            h = adapter.mlp(layer).register_forward_hook(lambda m, a, out: torch.zeros_like(out))
        handles.append(h)
    try:
        return logits(model, ids)
    finally:
        for h in handles:
            h.remove()


def masked_logits(dense, plan, ids, means=None):
    """Dense logits with removed heads' and channels' inputs to the output projections zeroed
    (or set to `means[(layer, kind)]`, FLAP's compensation); a norm over a whole q or k
    projection (OLMo 2) computes its RMS over the kept channels, as it does once pruned."""
    adapter, handles = adapter_for(dense), []

    def fill_pre(drop, fill):
        def pre(_m, args):
            x = args[0].clone()
            x[..., drop] = fill
            return (x,)

        return pre

    def renorm(kept):
        def hook(mod, args, _out):
            x = args[0].float()
            var = x[..., kept].pow(2).mean(-1, keepdim=True)
            return mod.weight * (x * torch.rsqrt(var + mod.variance_epsilon))

        return hook

    for i, k in plan["layers"].items():
        layer = adapter.layers(dense)[i]
        hd = adapter.shape(layer).head_dim
        q, kv = head_rows(k["kept_q_heads"], hd), head_rows(k["kept_kv_heads"], hd)
        for kind, kept in (("attn", q), ("mlp", torch.tensor(k["kept_mlp_channels"]))):
            mod = adapter.out_proj(layer, kind)
            drop = torch.ones(mod.in_features, dtype=torch.bool)
            drop[kept] = False
            if drop.any():
                fill = means[(i, kind)][drop] if means else 0.0
                handles.append(mod.register_forward_pre_hook(fill_pre(drop, fill)))
        pieces = adapter.pieces(layer)
        for key, kept in (("q_norm", q), ("k_norm", kv)):
            if key in pieces and len(kept) < pieces[key].size:
                handles.append(pieces[key].module.register_forward_hook(renorm(kept)))
    try:
        return logits(dense, ids)
    finally:
        for h in handles:
            h.remove()

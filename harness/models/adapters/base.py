"""`DecoderAdapter`: how the harness finds its way around one decoder family (Llama's layout here).

A family subclass overrides only what differs from Llama:
  - `attn_norms` / `mlp_norms`: the norms that belong to each sublayer (a pre-norm before it,
    post-norms on its output); they go when the sublayer is removed;
  - `mid_name`: a module whose input is the residual stream between attention and MLP (the point
    depth criteria read inside a block);
  - `pieces(layer)`: where the logical projections q, k, v, o, gate, up, down live, as rows or
    columns of which weight (fused weights hold several pieces at different offsets; norms that
    span the whole q or k projection are pieces too, sliced with their heads);
  - `after_attention_resized`: attributes an attention module keeps about its own shape;
  - `logits`, `needs_bos`, `attn_implementation`: model-level quirks.
Everything else (shapes, scoring members, surgery, skeletons for strict loading, LoRA targets)
is derived from these, once, here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# LoRA target names are given in Llama's vocabulary (what peft users know); `lora_targets` maps
# them onto a family's own modules.
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTN_IN, MLP_IN = ("q", "k", "v"), ("gate", "up")


class SkippedAttention(nn.Module):
    """A removed self-attention: no parameters, no KV cache, adds nothing to the residual."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class SkippedMLP(nn.Module):
    """A removed MLP: no parameters, adds nothing to the residual."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


@dataclass(frozen=True)
class Piece:
    """One logical projection of a layer: rows (axis 0; a 1-D weight is always axis 0) or
    columns (axis 1) [offset, offset + size) of the weight of `owner.<name>`."""

    owner: nn.Module
    name: str
    axis: int
    offset: int
    size: int

    @property
    def module(self) -> nn.Module:
        return getattr(self.owner, self.name)


@dataclass(frozen=True)
class Member:
    """A slice of one parameter that is removed with a unit: `size` entries from `offset` along
    `axis`, made of equal consecutive blocks, one per unit."""

    param: nn.Parameter
    axis: int
    offset: int
    size: int

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """This member's slice of `t` (a tensor shaped like `param`)."""
        return t.narrow(self.axis if t.dim() == 2 else 0, self.offset, self.size)

    @property
    def numel(self) -> int:
        p = self.param
        return self.size * (p.shape[1 - self.axis] if p.dim() == 2 else 1)


@dataclass(frozen=True)
class LayerShape:
    """What width pruning changes in a layer, and the biases an output projection has."""

    hidden: int
    n_q: int
    n_kv: int
    head_dim: int
    inter: int
    o_bias: bool
    down_bias: bool

    def as_config(self) -> dict:
        """The per-layer fields written to `config.harness_layer_shapes`."""
        return {"num_attention_heads": self.n_q, "num_key_value_heads": self.n_kv,
                "intermediate_size": self.inter, "o_bias": self.o_bias,
                "down_bias": self.down_bias}


def unwrap(model: nn.Module) -> nn.Module:
    """The causal LM inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def features(module: nn.Module, axis: int) -> int:
    """Output (axis 0) or input (axis 1) size of a Linear, a peft-wrapped Linear or a norm."""
    if axis == 0 and hasattr(module, "out_features"):
        return int(module.out_features)
    if axis == 1 and hasattr(module, "in_features"):
        return int(module.in_features)
    return int(module.weight.shape[axis])


def head_rows(heads, head_dim: int) -> torch.Tensor:
    """Row (or column) indices of whole heads."""
    heads = torch.as_tensor(list(heads), dtype=torch.long)
    return (heads.unsqueeze(1) * head_dim + torch.arange(head_dim)).reshape(-1)


def slice_linear(lin: nn.Linear, rows=None, cols=None, extra_bias=None) -> nn.Linear:
    """A new Linear with the given rows/columns of `lin` (+ `extra_bias` added to its bias, which
    is created if `lin` has none). Works on meta weights too (then nothing is copied)."""
    w = lin.weight.detach()
    w = w[rows.to(w.device)] if rows is not None else w
    w = w[:, cols.to(w.device)] if cols is not None else w
    b = lin.bias.detach() if lin.bias is not None else None
    b = b[rows.to(b.device)] if b is not None and rows is not None else b
    if extra_bias is not None:
        b = extra_bias.to(device=w.device, dtype=w.dtype) + (b if b is not None else 0)
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    if not w.is_meta:
        with torch.no_grad():
            new.weight.copy_(w)
            if b is not None:
                new.bias.copy_(b)
    return new


class DecoderAdapter:
    """Llama's layout (also Mistral's and Qwen2's). See the module docstring for what a family
    overrides. Methods take the causal LM (`model`) or one of its decoder layers (`layer`)."""

    model_types: tuple[str, ...] = ()  # filled by `register`
    attn_name, mlp_name = "self_attn", "mlp"
    attn_norms: tuple[str, ...] = ("input_layernorm",)
    mlp_norms: tuple[str, ...] = ("post_attention_layernorm",)
    mid_name = "post_attention_layernorm"
    per_layer_config: tuple[str, ...] = ("layer_types",)  # config lists with one entry per layer
    needs_bos = False  # perplexity windows need a leading BOS token (not scored)
    fused: dict[str, tuple[str, ...]] = {}  # fused module -> the Llama projections it holds

    # ---- model level ----------------------------------------------------------------------
    def backbone(self, model: nn.Module) -> nn.Module:
        """The decoder stack (embeddings, `layers`, final norm) of a causal LM."""
        return unwrap(model).model

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.backbone(model).layers

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """LM logits from the last block's output (final norm, LM head)."""
        lm = unwrap(model)
        return lm.lm_head(self.backbone(lm).norm(hidden))

    def attn_implementation(self, config, requested: str) -> str:
        """The attention kernel to load with (a family may need eager for correctness)."""
        return requested

    def lora_targets(self, names) -> list[str]:
        """peft target module names for `names` (Llama's vocabulary, or this family's own)."""
        out = []
        for name in names:
            fused = [f for f, parts in self.fused.items() if name in parts]
            for target in fused or [name]:
                if target not in out:
                    out.append(target)
        return out

    # ---- sublayers ------------------------------------------------------------------------
    def sublayer_names(self, unit: str) -> tuple[str, ...]:
        """(sublayer attribute, its norms...) of a decoder layer for unit attn or mlp."""
        if unit == "attn":
            return (self.attn_name, *self.attn_norms)
        if unit == "mlp":
            return (self.mlp_name, *self.mlp_norms)
        raise ValueError(f"unit must be attn or mlp, got {unit!r}")

    def attention(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attn_name)

    def mlp(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.mlp_name)

    def has(self, layer: nn.Module, unit: str) -> bool:
        """Whether the block still has its `unit` ("attn"/"mlp"; "block" is always present)."""
        if unit == "attn":
            return not isinstance(self.attention(layer), SkippedAttention)
        if unit == "mlp":
            return not isinstance(self.mlp(layer), SkippedMLP)
        return True

    def unit_modules(self, layer: nn.Module, unit: str) -> list[nn.Module]:
        """The modules whose parameters a unit owns (a sublayer owns its norms)."""
        if unit == "block":
            return [layer]
        return [getattr(layer, name) for name in self.sublayer_names(unit)]

    def remove_sublayer(self, layer: nn.Module, unit: str) -> None:
        """Swap the attention or MLP (and its norms) for parameter-free stand-ins; a removed
        post-norm maps zero to zero, so nothing else changes."""
        sub, *norms = self.sublayer_names(unit)
        setattr(layer, sub, SkippedAttention() if unit == "attn" else SkippedMLP())
        for norm in norms:
            setattr(layer, norm, nn.Identity())

    def mid_module(self, layer: nn.Module) -> nn.Module:
        """A module whose input is the residual stream after attention, before the MLP."""
        return getattr(layer, self.mid_name)

    # ---- projections ----------------------------------------------------------------------
    def pieces(self, layer: nn.Module) -> dict[str, Piece]:
        """{q, k, v, o, gate, up, down: Piece} of the sublayers the layer still has."""
        out = {}
        if self.has(layer, "attn"):
            a = self.attention(layer)
            for key, name in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
                out[key] = Piece(a, name, 0, 0, features(getattr(a, name), 0))
            out["o"] = Piece(a, "o_proj", 1, 0, features(a.o_proj, 1))
        if self.has(layer, "mlp"):
            m = self.mlp(layer)
            for key, name in (("gate", "gate_proj"), ("up", "up_proj")):
                out[key] = Piece(m, name, 0, 0, features(getattr(m, name), 0))
            out["down"] = Piece(m, "down_proj", 1, 0, features(m.down_proj, 1))
        return out

    def out_proj(self, layer: nn.Module, kind: str) -> nn.Module:
        """The output projection of the attention (o) or MLP (down) sublayer."""
        return self.pieces(layer)["o" if kind == "attn" else "down"].module

    def shape(self, layer: nn.Module) -> LayerShape:
        """Head counts, MLP size and output biases of a layer that has both sublayers."""
        p, hd = self.pieces(layer), self.attention(layer).head_dim
        return LayerShape(
            hidden=features(p["o"].module, 0), n_q=p["q"].size // hd, n_kv=p["k"].size // hd,
            head_dim=hd, inter=p["gate"].size, o_bias=p["o"].module.bias is not None,
            down_bias=p["down"].module.bias is not None,
        )

    def members(self, layer: nn.Module, kind: str, unit: str) -> tuple[int, list[Member]]:
        """(number of units, parameter slices removed with them) for attention units (`unit`
        q_head: per query head; kv_group: per KV head with its query heads) or MLP channels."""
        p = self.pieces(layer)
        if kind == "attn":
            hd = self.attention(layer).head_dim
            kv = unit == "kv_group"
            n = (p["k"].size if kv else p["q"].size) // hd
            keys = [k for k in p if k in self._attn_unit_pieces(kv)]
        else:
            n, keys = p["gate"].size, ["gate", "up", "down"]
        out = []
        for key in keys:
            piece = p[key]
            mod = piece.module
            out.append(Member(mod.weight, piece.axis, piece.offset, piece.size))
            if piece.axis == 0 and getattr(mod, "bias", None) is not None:
                out.append(Member(mod.bias, 0, piece.offset, piece.size))
        return n, out

    @staticmethod
    def _attn_unit_pieces(kv_group: bool) -> tuple[str, ...]:
        if kv_group:
            return ("q", "q_norm", "k", "k_norm", "v", "o")
        return ("q", "q_norm", "o")

    # ---- surgery --------------------------------------------------------------------------
    def prune_attention(self, layer, kept_q, kept_kv, extra_bias=None) -> None:
        """Keep only the query heads `kept_q` and KV heads `kept_kv` (in place); `extra_bias`
        is added to the output projection's bias (created if missing)."""
        a = self.attention(layer)
        hd = a.head_dim
        q, kv = head_rows(kept_q, hd), head_rows(kept_kv, hd)
        keep = {"q": q, "k": kv, "v": kv, "o": q, "q_norm": q, "k_norm": kv}
        self._keep(layer, keep, {"o": extra_bias})
        self.after_attention_resized(a, len(kept_q), len(kept_kv))

    def prune_mlp(self, layer, kept, extra_bias=None) -> None:
        """Keep only the MLP channels `kept` (in place); `extra_bias` as in prune_attention."""
        ch = torch.as_tensor(list(kept), dtype=torch.long)
        self._keep(layer, {"gate": ch, "up": ch, "down": ch}, {"down": extra_bias})
        m = self.mlp(layer)
        if hasattr(m, "intermediate_size"):
            m.intermediate_size = len(ch)

    def after_attention_resized(self, attn: nn.Module, n_q: int, n_kv: int) -> None:
        attn.num_key_value_groups = n_q // n_kv

    def resize(self, layer, shape: dict) -> None:
        """Give an (uninitialised) layer the shape of a `config.harness_layer_shapes` entry:
        its projections become empty meta tensors, filled later by a strict assign-load."""
        nq, nkv, inter = (shape[k] for k in
                          ("num_attention_heads", "num_key_value_heads", "intermediate_size"))
        if nq % nkv:
            raise ValueError(f"layer shape {shape} has {nq} query heads, "
                             f"not a multiple of {nkv} KV heads")
        for piece in self.pieces(layer).values():
            piece.module.to("meta")
        hidden = self.shape(layer).hidden
        bias = {k: torch.zeros(hidden, device="meta") if shape[f"{k}_bias"] else None
                for k in ("o", "down")}
        self.prune_attention(layer, range(nq), range(nkv), bias["o"])
        self.prune_mlp(layer, range(inter), bias["down"])

    def _keep(self, layer, keep: dict, extra_bias: dict) -> None:
        """Slice every piece of the layer to the `keep[piece]` indices (relative to the piece);
        pieces that share a fused weight are cut together, in their order in that weight."""
        groups: dict[tuple, list] = {}
        for key, piece in self.pieces(layer).items():
            if key in keep:
                groups.setdefault((id(piece.owner), piece.name), []).append((key, piece))
        for group in groups.values():
            group.sort(key=lambda kp: kp[1].offset)
            first = group[0][1]
            index = torch.cat([p.offset + keep[k] for k, p in group])
            mod = first.module
            if isinstance(mod, nn.Linear):
                extra = next((extra_bias.get(k) for k, _ in group if extra_bias.get(k) is not None),
                             None)
                rows, cols = (index, None) if first.axis == 0 else (None, index)
                setattr(first.owner, first.name, slice_linear(mod, rows, cols, extra))
            else:  # a norm over the whole projection (sliced with its heads)
                w = mod.weight.detach()
                mod.weight = nn.Parameter(w[index.to(w.device)],
                                          requires_grad=mod.weight.requires_grad)

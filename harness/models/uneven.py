"""Save/load models whose decoder layers differ in shape (after width pruning).

After pruning, `record_layer_shapes(model)` writes the shapes into `model.config`:
  - all layers alike and no extra biases: the stock fields (num_attention_heads,
    num_key_value_heads, intermediate_size, and head_dim explicitly), so plain
    `AutoModelForCausalLM.from_pretrained` loads the checkpoint;
  - otherwise `config.harness_layer_shapes` = one dict per layer {num_attention_heads,
    num_key_value_heads, intermediate_size, o_bias, down_bias}; `load_uneven(dir)` builds that
    skeleton and loads the safetensors strictly (any missing, unexpected or mis-shaped tensor
    is an error; nothing is silently re-initialised).
Uneven models support the default dynamic KV cache; a static cache (sized from the config) is not.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
from transformers.initialization import no_init_weights

KEY = "harness_layer_shapes"


def layer_shape(layer, config=None) -> dict:
    a, m = layer.self_attn, layer.mlp
    if not hasattr(a, "q_proj") or not hasattr(m, "gate_proj"):  # a depth-pruned sublayer
        return _config_shape(config)
    return {
        "num_attention_heads": a.q_proj.out_features // a.head_dim,
        "num_key_value_heads": a.k_proj.out_features // a.head_dim,
        "intermediate_size": m.gate_proj.out_features,
        "o_bias": a.o_proj.bias is not None,
        "down_bias": m.down_proj.bias is not None,
    }


def _config_shape(config) -> dict:
    o_bias, down_bias = _stock_biases(config)
    return {
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "intermediate_size": config.intermediate_size,
        "o_bias": o_bias,
        "down_bias": down_bias,
    }


def _stock_biases(config) -> tuple[bool, bool]:
    """(o_proj has bias, down_proj has bias) in a model built from this config."""
    cfg = copy.deepcopy(config)
    if hasattr(cfg, KEY):
        delattr(cfg, KEY)
    with torch.device("meta"):
        layer = AutoModelForCausalLM.from_config(cfg).model.layers[0]
    return layer.self_attn.o_proj.bias is not None, layer.mlp.down_proj.bias is not None


def is_uneven(config) -> bool:
    return bool(getattr(config, KEY, None))


def record_layer_shapes(model) -> bool:
    """Describe the model's (possibly pruned) layer shapes in its config; True if uneven."""
    cfg = model.config
    layers = model.model.layers
    cfg.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    shapes = [layer_shape(layer, cfg) for layer in layers]
    o_bias, down_bias = _stock_biases(cfg)
    first = shapes[0]
    if all(s == first for s in shapes) and (first["o_bias"], first["down_bias"]) == (
        o_bias,
        down_bias,
    ):
        cfg.num_attention_heads = first["num_attention_heads"]
        cfg.num_key_value_heads = first["num_key_value_heads"]
        cfg.intermediate_size = first["intermediate_size"]
        if hasattr(cfg, KEY):
            delattr(cfg, KEY)
        return False
    setattr(cfg, KEY, shapes)
    return True


def _linear(
    lin: nn.Linear, out_f: int | None = None, in_f: int | None = None, bias=None
) -> nn.Linear:
    """An empty (meta) Linear replacing `lin` with new sizes; bias kept unless given."""
    bias = lin.bias is not None if bias is None else bias
    out_f, in_f = out_f or lin.out_features, in_f or lin.in_features
    return nn.Linear(in_f, out_f, bias=bias, device="meta", dtype=lin.weight.dtype)


def _reshape_layer(layer, s: dict) -> None:
    a, m = layer.self_attn, layer.mlp
    hd = a.head_dim
    nq, nkv, inter = s["num_attention_heads"], s["num_key_value_heads"], s["intermediate_size"]
    if nq % nkv:
        raise ValueError(f"layer shape {s} has {nq} query heads, not a multiple of {nkv} KV heads")
    a.q_proj = _linear(a.q_proj, out_f=nq * hd)
    a.k_proj = _linear(a.k_proj, out_f=nkv * hd)
    a.v_proj = _linear(a.v_proj, out_f=nkv * hd)
    a.o_proj = _linear(a.o_proj, in_f=nq * hd, bias=s["o_bias"])
    a.num_key_value_groups = nq // nkv
    m.gate_proj = _linear(m.gate_proj, out_f=inter)
    m.up_proj = _linear(m.up_proj, out_f=inter)
    m.down_proj = _linear(m.down_proj, in_f=inter, bias=s["down_bias"])
    m.intermediate_size = inter


def build_skeleton(
    config, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None
):
    """Model with the per-layer shapes of `config`; per-layer projections are left on the meta
    device (uninitialised) until weights are loaded with `load_state_dict(..., assign=True)`."""
    shapes = getattr(config, KEY, None)
    if shapes is not None and len(shapes) != config.num_hidden_layers:
        raise ValueError(f"{KEY} has {len(shapes)} entries for {config.num_hidden_layers} layers")
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kw)
    model.tie_weights()  # no_init_weights skips tying
    for layer, s in zip(model.model.layers, shapes or [], strict=False):
        _reshape_layer(layer, s)
    if any(getattr(config, k, None) for k in ("harness_skip_attn", "harness_skip_mlp")):
        from harness.pruning.blocks import apply_sublayer_skips  # depth-pruned sublayers

        apply_sublayer_skips(model)
    return model


def _read_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors(.index.json) in {model_dir}")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(model_dir / f)))
    return sd


def load_uneven(
    model_dir, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None
):
    """Build the skeleton described by `model_dir`'s config and load its weights strictly."""
    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    model = build_skeleton(config, dtype=dtype, attn_implementation=attn_implementation)
    sd = _read_state_dict(model_dir)
    groups: dict[int, list[str]] = {}  # tied parameters share one id and need one stored name
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    param_names = {n for g in groups.values() for n in g}
    buffers = [n for n in model.state_dict() if n not in param_names]
    missing = [g[0] for g in groups.values() if not any(n in sd for n in g)]
    missing += [n for n in buffers if n not in sd]
    unexpected = sorted(set(sd) - param_names - set(buffers))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {model_dir} does not match its config: "
            f"missing {sorted(missing)}, unexpected {unexpected}"
        )
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as e:  # size mismatch
        raise ValueError(f"checkpoint {model_dir} does not match its config: {e}") from None
    if any(len(g) > 1 for g in groups.values()):
        model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise ValueError(f"checkpoint {model_dir} left parameters unloaded: {left}")
    if (model_dir / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
    return model.eval()

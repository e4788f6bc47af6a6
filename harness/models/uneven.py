"""Save/load models whose decoder layers differ in shape (after width pruning).

After pruning, `record_layer_shapes(model)` writes the shapes into `model.config`:
  - all layers alike and no extra biases: the stock fields (num_attention_heads,
    num_key_value_heads, intermediate_size, and head_dim explicitly), so plain
    `AutoModelForCausalLM.from_pretrained` loads the checkpoint (unless the config class refuses
    the head count, e.g. Llama/Gemma with heads not dividing hidden_size);
  - otherwise `config.harness_layer_shapes` = one dict per layer {num_attention_heads,
    num_key_value_heads, intermediate_size, o_bias, down_bias}; `load_uneven(dir)` builds that
    skeleton and loads the safetensors strictly (any missing, unexpected or mis-shaped tensor
    is an error; nothing is silently re-initialised).
Uneven models support the default dynamic KV cache; a static cache (sized from the config) is not.

Such a checkpoint (uneven shapes or removed sublayers) is saved with `model_type` = `MARKER` and
the family in `harness_model_type` (`mark_config_file`), so stock `AutoConfig` /
`AutoModelForCausalLM.from_pretrained` refuse it loudly ("model type `harness_pruned` ... not
recognized") instead of loading random weights into the removed sublayers; `read_config` (every
harness loader) restores the family. Older checkpoints with the stock model_type still load.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
from transformers.initialization import no_init_weights
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from harness.models.adapters import adapter_for

KEY = "harness_layer_shapes"
SKIP_KEYS = {"attn": "harness_skip_attn", "mlp": "harness_skip_mlp"}  # depth-removed sublayers


MARKER = "harness_pruned"  # a model_type no stock library knows
BASE_KEY = "harness_model_type"
NOTE = ("saved by the width-vs-depth harness with removed sublayers or per-layer shapes that stock "
        "transformers cannot build: load it with harness.models.loader.load_model(path) or "
        "harness.models.uneven.load_uneven(path)")


def needs_marker(config) -> bool:
    """True for configs whose checkpoint a stock class would load wrongly or not at all."""
    return any(getattr(config, k, None) for k in (KEY, *SKIP_KEYS.values()))


def mark_config_file(model_dir) -> bool:
    """Rewrite `model_dir/config.json` with the harness model_type when the checkpoint needs the
    harness loader (True if it did)."""
    path = Path(model_dir) / "config.json"
    raw = json.loads(path.read_text())
    if raw.get("model_type") == MARKER or not any(raw.get(k) for k in (KEY, *SKIP_KEYS.values())):
        return False
    raw[BASE_KEY] = raw["model_type"]
    raw["model_type"] = MARKER
    raw["architectures"] = ["HarnessPrunedForCausalLM"]
    raw["harness_note"] = NOTE
    path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    return True


def raw_config(model_dir) -> dict:
    """config.json as plain JSON with the family's own model_type restored."""
    raw = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    if isinstance(raw, dict) and raw.get("model_type") == MARKER:
        raw = {k: v for k, v in raw.items() if k not in ("harness_note", "architectures")}
        raw["model_type"] = raw.pop(BASE_KEY, None)
    return raw


def read_config(model_dir, **kwargs):
    """`AutoConfig.from_pretrained`, also for checkpoints saved with the harness model_type."""
    path = Path(model_dir) / "config.json"
    if not path.is_file() or json.loads(path.read_text(encoding="utf-8")).get("model_type") != MARKER:
        return AutoConfig.from_pretrained(model_dir, **kwargs)  # stock, hub ids, old checkpoints
    raw = raw_config(model_dir)
    if raw.get("model_type") not in CONFIG_MAPPING:
        raise ValueError(f"{path}: {BASE_KEY}={raw.get('model_type')!r} is not a known family")
    return CONFIG_MAPPING[raw["model_type"]].from_dict(raw)


def renumber_cache_indices(model) -> None:
    """Give the remaining attention modules contiguous `layer_idx` (their KV-cache slots)."""
    slot, adapter = 0, adapter_for(model)
    for layer in adapter.layers(model):
        if not adapter.has(layer, "attn"):
            continue
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = slot
        slot += 1


def apply_sublayer_skips(model):
    """Make the modules match `config.harness_skip_attn/mlp` (idempotent), renumber KV slots:
    a removed sublayer becomes the adapter's parameter-free zero stand-in."""
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    for unit, key in SKIP_KEYS.items():
        for i in getattr(model.config, key, None) or []:
            if adapter.has(layers[i], unit):
                adapter.remove_sublayer(layers[i], unit)
    renumber_cache_indices(model)
    return model


def layer_shape(layer, config, adapter) -> dict:
    """The `harness_layer_shapes` entry of a layer (the config's shape for a layer whose
    attention or MLP was removed by depth pruning)."""
    if not (adapter.has(layer, "attn") and adapter.has(layer, "mlp")):
        return _config_shape(config)
    return adapter.shape(layer).as_config()


def _config_shape(config) -> dict:
    """The shape entry of a layer built from this config (on the meta device, no weights)."""
    cfg = copy.deepcopy(config)
    for key in (KEY, *SKIP_KEYS.values()):
        if hasattr(cfg, key):
            delattr(cfg, key)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    adapter = adapter_for(model)
    return adapter.shape(adapter.layers(model)[0]).as_config()


def is_uneven(config) -> bool:
    return bool(getattr(config, KEY, None))


def record_layer_shapes(model) -> bool:
    """Describe the model's (possibly pruned) layer shapes in its config; True if uneven."""
    cfg, adapter = model.config, adapter_for(model)
    cfg.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    shapes = [layer_shape(layer, cfg, adapter) for layer in adapter.layers(model)]
    stock = _config_shape(cfg)
    first = shapes[0]
    if all(s == first for s in shapes) and (first["o_bias"], first["down_bias"]) == (
        stock["o_bias"], stock["down_bias"]
    ) and _stock_fields_fit(cfg, first):
        cfg.num_attention_heads = first["num_attention_heads"]
        cfg.num_key_value_heads = first["num_key_value_heads"]
        cfg.intermediate_size = first["intermediate_size"]
        if hasattr(cfg, KEY):
            delattr(cfg, KEY)
        return False
    setattr(cfg, KEY, shapes)
    return True


STOCK_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


def _stock_fields_fit(config, shape: dict) -> bool:
    """Whether the config class accepts these head counts (Llama's and Gemma's configs refuse a
    head count that does not divide hidden_size, even with head_dim given; such models are
    described per layer instead and load through `load_uneven`)."""
    cfg = copy.deepcopy(config)
    for key in STOCK_FIELDS:
        setattr(cfg, key, shape[key])
    try:
        cfg.validate()
    except Exception:  # noqa: BLE001 - huggingface_hub's strict-dataclass validation error
        return False
    return True


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
    adapter = adapter_for(model)
    for layer, s in zip(adapter.layers(model), shapes or [], strict=False):
        adapter.resize(layer, s)
    if any(getattr(config, k, None) for k in SKIP_KEYS.values()):
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
    config = read_config(model_dir)
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

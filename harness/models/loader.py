"""One loader for every model the harness touches, and one saver for every model it changes.

`load_model(cfg)` accepts:
  (a) an embedded model: the default `smollm2_135m` or `gemma3_270m` (opt-in, see
      harness/assets.py), each converted once from its protocol GGUF,
  (b) `path=DIR_OR_ID`: any local HF directory or hub id (hub access needed for ids),
  (c) a shape-only name such as `llama2_7b_shape` (random weights, flagged `shape_only`),
  (d) any directory this harness saved, pruned or recovered, even with uneven per-layer shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.io import atomic_dir
from harness.keys import Keyed
from harness.models.adapters import adapter_for, check_supported
from harness.models.hub import is_hub_id
from harness.models.hub import resolve as resolve_hub
from harness.models.shapes import SHAPES, shape_config

EMBEDDED = ("smollm2_135m", "gemma3_270m")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelConfig(Keyed):
    """Which model to load and how. `name` picks a known model; `path` overrides it."""

    DETERMINING = ("name", "path", "dtype", "attn_implementation")
    NOT_DETERMINING = ("device", "trust_remote_code")

    name: str = "smollm2_135m"
    path: str | None = None
    dtype: str = "auto"  # auto = float32 on CPU, bfloat16 on GPU
    device: str = "auto"
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False

    def validate(self) -> None:
        if self.path is None and self.name not in EMBEDDED + tuple(SHAPES):
            choices = ", ".join(EMBEDDED + tuple(sorted(SHAPES)))
            raise ValueError(f"unknown model {self.name!r}; choose from {choices} or set model.path")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.path is not None and not Path(self.path).exists() and not is_hub_id(self.path):
            raise ValueError(f"model.path={self.path} does not exist: give a model directory "
                             "or a hub id org/name")

    def key_fields(self) -> dict:
        """`path`, when set, names the model; `name` then plays no part."""
        out = super().key_fields()
        if self.path is not None:
            del out["name"]
        return out

    @property
    def shape_only(self) -> bool:
        return self.path is None and self.name in SHAPES


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` = this process's GPU (cuda:LOCAL_RANK when several processes share a node), else CPU."""
    if device == "auto":
        from harness.distributed import device as rank_device

        return rank_device()
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def model_source(cfg: ModelConfig) -> str:
    """Local directory the weights come from (fetching the embedded model or a hub snapshot)."""
    if cfg.path is not None:
        return resolve_hub(cfg.path, cfg.trust_remote_code) if is_hub_id(cfg.path) else cfg.path
    if cfg.name in EMBEDDED:
        from harness.assets import embedded_dir

        return str(embedded_dir(cfg.name))
    raise ValueError(f"{cfg.name!r} is shape-only and has no weights on disk")


def load_hf_config(cfg: ModelConfig):
    """The model's transformers config, without loading weights (for config-time validation)."""
    if cfg.shape_only:
        return shape_config(cfg.name)
    from harness.models.uneven import read_config

    config = read_config(model_source(cfg), trust_remote_code=cfg.trust_remote_code)
    check_supported(config.model_type)
    return config


def load_model(cfg: ModelConfig | str) -> tuple[torch.nn.Module, object | None]:
    """(model in eval mode on its device, tokenizer or None for shape-only models)."""
    if isinstance(cfg, str):
        cfg = ModelConfig(name=cfg) if cfg in EMBEDDED + tuple(SHAPES) else ModelConfig(path=cfg)
    cfg.validate()
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.shape_only:
        hf_config = shape_config(cfg.name)
        hf_config._attn_implementation = cfg.attn_implementation
        with device:
            model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
        return model.eval(), None
    source = model_source(cfg)
    hf_config = load_hf_config(cfg)
    attn = adapter_for(hf_config).attn_implementation(hf_config, cfg.attn_implementation)
    if _needs_harness_skeleton(hf_config):
        from harness.models.uneven import load_uneven

        model = load_uneven(source, dtype=dtype, attn_implementation=attn)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation=attn,
            trust_remote_code=cfg.trust_remote_code,
        )
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code,
                                              config=hf_config)
    return model.to(device).eval(), tokenizer


def _needs_harness_skeleton(hf_config) -> bool:
    """True for checkpoints whose per-layer shapes a stock config cannot describe."""
    return any(
        getattr(hf_config, key, None)
        for key in ("harness_layer_shapes", "harness_skip_attn", "harness_skip_mlp")
    )


def check_loadable(model_dir: str | Path) -> None:
    """Raise ValueError unless `model_dir` holds a config and safetensors whose tensor names and
    shapes are exactly those of the model its config describes (built on the meta device, so no
    weights are read): the check that a directory is a model before anyone may load it."""
    from safetensors import safe_open

    from harness.models.uneven import build_skeleton, read_config

    model_dir = Path(model_dir)
    try:
        config = read_config(model_dir)
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise ValueError("no safetensors files")
        stored = {}
        for f in files:
            with safe_open(str(f), framework="pt") as st:
                stored.update({k: tuple(st.get_slice(k).get_shape()) for k in st.keys()})
        with torch.device("meta"):
            skeleton = build_skeleton(config)
    except Exception as e:  # noqa: BLE001 - unreadable config or truncated safetensors
        raise ValueError(f"{model_dir} is not a complete model: {e}") from None
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    tied = {k for k in want if k not in stored and k.endswith("lm_head.weight")
            and getattr(config, "tie_word_embeddings", False)}
    missing = sorted(set(want) - set(stored) - tied)
    wrong = sorted(k for k in set(want) & set(stored) if want[k] != stored[k])
    if missing or wrong or set(stored) - set(want):
        raise ValueError(f"{model_dir} is not a complete model: missing {missing[:5]}, "
                         f"wrong shapes {wrong[:5]}, unexpected {sorted(set(stored) - set(want))[:5]}")


def save_model(model, tokenizer, out_dir: str | Path, plan: dict | None = None) -> Path:
    """Write model (safetensors), tokenizer and `prune_plan.json` atomically into `out_dir`."""
    out = Path(out_dir)
    from harness.models.uneven import mark_config_file

    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        mark_config_file(tmp)  # stock loaders refuse what only the harness builds right
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if plan is not None:
            (tmp / "prune_plan.json").write_text(json.dumps(plan, indent=2))
        check_loadable(tmp)
    return out

"""The model a run starts from, checked from its headers: directory, config.json, every tensor
the config implies (safetensors headers, or a `.bin` opened with `weights_only` onto the meta
device), the tokenizer against the vocabulary, and where and how it will run (device,
attention implementation). Nothing here loads weights, and no model code runs before the
family check passes (`trust_remote_code` runs a checkpoint's own Python only after it)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.assets import AssetError
from harness.models.adapters import check_supported
from harness.models.hub import HubError
from harness.models.loader import model_source
from harness.models.shapes import shape_config
from harness.validation.errors import InputError, first_line

_models: dict[tuple, tuple] = {}  # checked model dirs -> (hf_config, params), per process
_tokenizers: dict[str, object] = {}


def check_model(cfg) -> tuple[object, int]:
    """(transformers config, parameter count) of the model `cfg` names, from headers only."""
    if cfg.shape_only:
        hf_config = shape_config(cfg.name)
        return hf_config, _count(*expected_tensors(hf_config))
    try:
        model_dir = Path(model_source(cfg))
    except (HubError, AssetError) as e:
        raise InputError(first_line(e)) from None
    key = "model.path=" + (cfg.path or str(model_dir))
    signature = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                             for f in model_dir.iterdir())) if model_dir.is_dir() else ()
    if (str(model_dir), signature) not in _models:
        _models[(str(model_dir), signature)] = _check_model_dir(model_dir, key, cfg)
    return _models[(str(model_dir), signature)]


def _check_model_dir(model_dir: Path, key: str, cfg) -> tuple[object, int]:
    from harness.models.uneven import raw_config, read_config

    if not model_dir.is_dir():
        raise InputError(f"{key} is not a directory: give a Hugging Face model directory")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise InputError(f"{key} has no config.json: point it at a Hugging Face model directory")
    try:
        raw = raw_config(model_dir)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{key}: config.json is not valid JSON ({first_line(e)}): "
                         "repair or re-download it") from None
    try:  # the family first, from the JSON itself: no model code may run for an unknown one
        check_supported(raw.get("model_type") if isinstance(raw, dict) else None)
    except ValueError as e:
        raise InputError(f"{key}: {e}") from None
    try:
        hf_config = read_config(model_dir, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds here
        raise InputError(f"{key}: config.json is not a usable model config ({first_line(e)})"
                         ) from None
    found = _checkpoint_shapes(model_dir, key)
    shapes, groups = expected_tensors(hf_config)
    missing = [g[0] for g in groups if not any(n in found for n in g)]
    wrong = [n for n, s in shapes.items() if n in found and tuple(found[n]) != s]
    if missing:
        raise InputError(f"{key}: the weights lack {missing[0]}"
                         f"{f' and {len(missing) - 1} more tensors' if len(missing) > 1 else ''}"
                         " that config.json implies: the checkpoint is incomplete or belongs "
                         "to another config")
    if wrong:
        n = wrong[0]
        raise InputError(f"{key}: {n} is {list(found[n])} in the weights but "
                         f"{list(shapes[n])} by config.json"
                         f"{f' (and {len(wrong) - 1} more)' if len(wrong) > 1 else ''}: "
                         "config.json and the weights belong to different models")
    return hf_config, _count(shapes, groups)


def _weight_files(model_dir: Path, key: str) -> list[str]:
    """The checkpoint's weight files: from its index, the single safetensors, or `.bin`s."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (model_dir / index).exists():
            try:
                return sorted(set(json.loads((model_dir / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise InputError(f"{key}: {index} is unreadable ({first_line(e)}): "
                                 "repair or re-download it") from None
    if (model_dir / "model.safetensors").exists():
        return ["model.safetensors"]
    bins = sorted(p.name for p in model_dir.glob("pytorch_model*.bin"))
    if bins:
        return bins
    raise InputError(f"{key} has no weights (model.safetensors, pytorch_model.bin or an index): "
                     "add them, or use model=<name>_shape for random weights")


def _checkpoint_shapes(model_dir: Path, key: str) -> dict[str, list[int]]:
    """Tensor shapes from the safetensors headers, or from `.bin` files opened with
    `weights_only=True` onto the meta device (no data read, no code run)."""
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    for name in _weight_files(model_dir, key):
        path = model_dir / name
        if not path.is_file():
            raise InputError(f"{key}: weights file {name} is missing: re-download the checkpoint")
        if name.endswith(".bin"):
            try:
                state = torch.load(path, map_location="meta", weights_only=True)
            except Exception as e:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError
                raise InputError(f"{key}: {name} is not a plain tensor checkpoint (torch.load "
                                 f"with weights_only refuses it: {first_line(e)[:120]}): convert "
                                 "it to safetensors with code you trust") from None
            odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)] \
                if isinstance(state, dict) else ["the file itself"]
            if odd:
                raise InputError(f"{key}: {name} is not a plain state dict ({odd[0]} is not a "
                                 "tensor): convert it to safetensors with code you trust")
            shapes.update({k: list(v.shape) for k, v in state.items()
                           if isinstance(v, torch.Tensor)})
            continue
        try:
            with safe_open(str(path), "pt") as f:
                shapes.update({k: f.get_slice(k).get_shape() for k in f.keys()})  # noqa: SIM118
        except Exception as e:  # noqa: BLE001 - SafetensorError and OSError
            raise InputError(f"{key}: {name} is not a readable safetensors file "
                             f"({first_line(e)}): it is truncated or damaged; re-save or "
                             "re-download it") from None
    return shapes


def expected_tensors(hf_config) -> tuple[dict[str, tuple], list[list[str]]]:
    """({state-dict name: shape}, names grouped by tensor, tied names together), built on the
    meta device from the config alone (per-layer shapes of pruned checkpoints included)."""
    from harness.models.uneven import build_skeleton

    with torch.device("meta"):
        model = build_skeleton(hf_config)
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    shapes = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items()}
    params = {n for g in groups.values() for n in g}
    buffers = [[n] for n in shapes if n not in params]
    return shapes, [*groups.values(), *buffers]


def _count(shapes: dict[str, tuple], groups: list[list[str]]) -> int:
    """Parameters (and persistent buffers), each tied tensor once."""
    return sum(torch.Size(shapes[g[0]]).numel() for g in groups)


def tokenizer(cfg):
    source = model_source(cfg)
    if source not in _tokenizers:
        from transformers import AutoTokenizer

        try:
            _tokenizers[source] = AutoTokenizer.from_pretrained(
                source, trust_remote_code=cfg.trust_remote_code)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"model.path={cfg.path or source} has no usable tokenizer "
                             f"({first_line(e)}): add the tokenizer files") from None
    return _tokenizers[source]


def check_vocab(tok, hf_config, cfg) -> None:
    """Every id the tokenizer gives plain text (and its BOS/EOS) has a row in the embedding."""
    added = set(tok.get_added_vocab())
    ids = [i for t, i in tok.get_vocab().items() if t not in added]
    ids += [i for i in (tok.bos_token_id, tok.eos_token_id) if i is not None]
    top, vocab = max(ids, default=0), hf_config.vocab_size
    if top >= vocab:
        raise InputError(f"model.path={cfg.path or cfg.name}: the tokenizer gives ids up to {top} "
                         f"but the model's vocab_size is {vocab}: the tokenizer belongs to "
                         "another model; use the model's own tokenizer")


def check_device(cfg) -> None:
    """`model.device` names a device this machine has."""
    if cfg.device == "auto":
        return
    try:
        device = torch.device(cfg.device)
    except (RuntimeError, ValueError):
        raise InputError(f"model.device={cfg.device} is not a device: use auto, cpu, cuda or "
                         "cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise InputError(f"model.device={cfg.device} but no GPU is visible here: use "
                             "model.device=cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise InputError(f"model.device={cfg.device} but this machine has {count} GPU(s): "
                             f"use cuda:0..cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"model.device={cfg.device} but MPS is not available: use cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"model.device={cfg.device} cannot run a model here: use auto, cpu, "
                         "cuda or cuda:N")


def check_attention(cfg) -> None:
    """`model.attn_implementation` is one transformers has, and its kernels are installed."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    name = cfg.attn_implementation
    choices = ["eager", *(k for k in ALL_ATTENTION_FUNCTIONS if "|" not in k)]
    if name not in choices:
        raise InputError(f"model.attn_implementation={name} is unknown: choose from "
                         f"{', '.join(choices)}")
    available = {"flash_attention_2": is_flash_attn_2_available,
                 "flash_attention_3": is_flash_attn_3_available}
    if name.startswith("flash_attention") and not available.get(name, lambda: False)():
        raise InputError(f"model.attn_implementation={name} needs the flash-attn package and a "
                         "GPU, which this machine lacks: use sdpa (the default) or eager")

"""One pass over every input a run will touch, before any model loads.

`check_inputs(spec)` reads only headers and a little text: the model's config.json and the
safetensors headers (every tensor the config implies is present with its shape), hub ids
(resolved to a local snapshot), the evaluation, calibration and training texts (UTF-8, enough
tokens for one window), sequence lengths against the model's positions, the token budget against
one optimizer step, and the results and cache directories. `check_disk` compares the free space
under the cache with what the run's model stages will write. Each failure is an `InputError`:
one line naming the key and the fix. The CLI prints it and exits with code 2, having written
nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from harness.assets import AssetError
from harness.data import protocol
from harness.models.adapters import check_supported
from harness.models.hub import HubError
from harness.models.loader import model_source, resolve_device, resolve_dtype
from harness.models.shapes import shape_config
from harness.recovery.registry import METHODS
from harness.recovery.run import min_tokens

_models: dict[tuple, tuple] = {}  # checked model dirs -> (hf_config, params), per process
_tokenizers: dict[str, object] = {}
_texts: set[tuple] = set()  # (source, key, window, per_document) that passed


class InputError(ValueError):
    """A bad input: one line naming the key and the fix."""


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_inputs(spec) -> tuple[object, int]:
    """Check every input of `spec` (a RunSpec); return the starting model's transformers config
    and parameter count."""
    hf_config, params = check_model(spec.model)
    spec.prune.validate(hf_config)
    check_positions(spec, hf_config)
    check_budget(spec.recover)
    if not spec.model.shape_only:
        tokenizer = _tokenizer(spec.model)
        for source in spec.eval.ppl_sources:
            check_text(source, "eval.ppl_sources", tokenizer, spec.eval.seq_len, "eval.seq_len")
        if spec.prune.name != "none":
            check_text(spec.data.calib_source, "data.calib_source", tokenizer,
                       spec.data.calib_seq_len + 1, "data.calib_seq_len", per_document=True)
        if "training_data" in METHODS.get(spec.recover.name).needs and \
                spec.recover.data != "wiki_train":
            check_training_data(spec.recover, tokenizer)
    check_results_dir(spec.results_dir)
    if spec.cache_dir:
        check_writable(spec.cache_dir, "cache_dir")
    return hf_config, params


# ---- the model ----------------------------------------------------------------------------
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
    from transformers import AutoConfig

    if not model_dir.is_dir():
        raise InputError(f"{key} is not a directory: give a Hugging Face model directory")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise InputError(f"{key} has no config.json: point it at a Hugging Face model directory")
    try:
        json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{key}: config.json is not valid JSON ({first_line(e)}): "
                         "repair or re-download it") from None
    try:
        hf_config = AutoConfig.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds here
        raise InputError(f"{key}: config.json is not a usable model config ({first_line(e)})"
                         ) from None
    try:
        check_supported(hf_config.model_type)
    except ValueError as e:
        raise InputError(f"{key}: {e}") from None
    found = _checkpoint_shapes(model_dir, key)
    shapes, groups = expected_tensors(hf_config)
    if found is not None:
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


def _checkpoint_shapes(model_dir: Path, key: str) -> dict[str, list[int]] | None:
    """Tensor shapes from the safetensors headers; None for a .bin-only checkpoint (unchecked)."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{key}: {index.name} is unreadable ({first_line(e)}): "
                             "repair or re-download it") from None
    elif (model_dir / "model.safetensors").exists():
        files = ["model.safetensors"]
    elif list(model_dir.glob("pytorch_model*.bin")):
        return None
    else:
        raise InputError(f"{key} has no weights (model.safetensors or its index): "
                         "add them, or use model=<name>_shape for random weights")
    shapes: dict[str, list[int]] = {}
    for name in files:
        if not (model_dir / name).is_file():
            raise InputError(f"{key}: weights file {name} is missing: re-download the checkpoint")
        try:
            with safe_open(str(model_dir / name), "pt") as f:
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


def _tokenizer(cfg):
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


# ---- lengths and budgets --------------------------------------------------------------------
def check_positions(spec, hf_config) -> None:
    """Every sequence the run scores or trains on fits the model's position embeddings (speed
    runs may go past them: they time random prompts, not quality)."""
    limit = getattr(hf_config, "max_position_embeddings", None)
    if not limit:
        return
    lengths = [("eval.seq_len", spec.eval.seq_len, True),
               ("data.calib_seq_len", spec.data.calib_seq_len, spec.prune.name != "none"),
               ("recover.seq_len", spec.recover.seq_len, spec.recover.name != "none")]
    for key, value, used in lengths:
        if used and value > limit:
            raise InputError(f"{key}={value} exceeds the model's max_position_embeddings="
                             f"{limit}: lower it to at most {limit}")


def check_budget(cfg, world: int | None = None) -> None:
    """The token budget buys at least one optimizer step per phase (never silently more)."""
    if not METHODS.get(cfg.name).phases:
        return

    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    need = min_tokens(cfg, world)
    if cfg.tokens < need:
        step = (f"recover.seq_len x batch_size x grad_accum{' x world size' * (world > 1)} = "
                f"{cfg.seq_len} x {cfg.batch_size} x {cfg.grad_accum}"
                f"{f' x {world}' * (world > 1)}")
        names = [p.name for p in METHODS.get(cfg.name).phases]
        per_phase = f" per phase ({', then '.join(names)})" if len(names) > 1 else ""
        raise InputError(f"recover.tokens={cfg.tokens} is less than one optimizer step{per_phase}"
                         f" ({step} tokens): set recover.tokens >= {need}")


# ---- texts ----------------------------------------------------------------------------------
def check_text(source: str, key: str, tokenizer, window: int, window_key: str,
               per_document: bool = False) -> None:
    """The source reads as UTF-8 documents with at least `window` tokens (in one document when
    `per_document`, as calibration windows are cut from single documents)."""
    if (source, key, window, per_document) in _texts:
        return
    if source.startswith("hf:"):  # its text arrives only when the run loads it
        check_hub_dataset(source, key)
        return
    try:
        docs = protocol.split_documents(source) if source in protocol.SPLITS else read_documents(
            Path(source), key)
    except AssetError as e:
        raise InputError(f"{key}: {first_line(e)}") from None
    count = 0
    for doc in docs:
        n = len(tokenizer(doc, add_special_tokens=False)["input_ids"])
        count = max(count, n) if per_document else count + n
        if count >= window:
            _texts.add((source, key, window, per_document))
            return
    where = "its longest document has" if per_document else "it has"
    raise InputError(f"{key}: {source} is too short: {where} {count} tokens, one window of "
                     f"{window_key} needs {window}: use a longer text or a smaller {window_key}")


def check_hub_dataset(source: str, key: str) -> None:
    """`hf:PATH[:CONFIG]:SPLIT` names a dataset the hub (or the local datasets cache) has."""
    import logging

    from datasets import load_dataset_builder

    parts = source[3:].split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise InputError(f"{key}: {source} is not hf:PATH[:CONFIG]:SPLIT")
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # no retry chatter: the one line below says it all
    try:
        builder = load_dataset_builder(parts[0], parts[1] if len(parts) == 3 else None)
    except Exception as e:  # noqa: BLE001 - connection, missing dataset or config
        raise InputError(f"{key}: {source} cannot be loaded ({first_line(e)}): without hub "
                         "access use a local .txt or .jsonl file") from None
    finally:
        hub_log.setLevel(level)
    splits = builder.info.splits
    if splits and parts[-1] not in splits:
        raise InputError(f"{key}: {source} has no split {parts[-1]!r}; splits: "
                         f"{', '.join(splits)}")


def read_documents(path: Path, key: str) -> list[str]:
    """Documents of a local .txt (blank-line separated) or .jsonl (`text` field) file."""
    if not path.is_file():
        raise InputError(f"{key}: {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{key}: {path} is not UTF-8 text ({e.reason} at byte {e.start}): "
                         "convert it to UTF-8") from None
    except OSError as e:
        raise InputError(f"{key}: {path} is unreadable ({first_line(e)})") from None
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    docs.append(json.loads(line)["text"])
                except (ValueError, KeyError, TypeError):
                    raise InputError(f"{key}: {path} line {i} is not a JSON object with a "
                                     "'text' string: fix that line") from None
        if not all(isinstance(d, str) for d in docs):
            raise InputError(f"{key}: {path} has a 'text' field that is not a string")
    else:
        docs = [d.strip() for d in text.split("\n\n")]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise InputError(f"{key}: {path} holds no text: give documents separated by blank lines")
    return docs


def check_training_data(cfg, tokenizer) -> None:
    """recover.data: an Alpaca .json list, or text with at least one recover.seq_len window."""
    path = Path(cfg.data)
    if path.suffix != ".json":
        check_text(cfg.data, "recover.data", tokenizer, cfg.seq_len, "recover.seq_len")
        return
    read_documents(path, "recover.data")  # UTF-8 and not empty
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(f"recover.data: {path} is not valid JSON ({first_line(e)})") from None
    if not (isinstance(records, list) and records and all(
            isinstance(r, dict) and ("text" in r or {"instruction", "output"} <= set(r))
            for r in records)):
        raise InputError(f"recover.data: {path} must be a JSON list of records with 'text', or "
                         "'instruction' and 'output' (Alpaca)")


# ---- directories and disk -------------------------------------------------------------------
def check_writable(path: str | Path, key: str) -> None:
    """`path` is a directory this process can create or write into."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{key}={path} is a file, not a directory: choose a directory")
    existing = p.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{key}={path} cannot be created ({existing} is a file): "
                         "choose another directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{key}={path} is not writable ({existing}): fix its permissions "
                         f"or choose another {key}")


def check_results_dir(results_dir: str | Path) -> None:
    """The results table can be read now and written at the end of the run."""
    from harness.tracking.results import TABLE, read_table

    if not str(results_dir or "").strip():
        raise InputError("results_dir is empty: give the directory for results.csv "
                         "(default: results)")
    check_writable(results_dir, "results_dir")
    if not (Path(results_dir) / TABLE).exists():
        return
    try:
        table = read_table(results_dir)
        ok = table.empty or "run_key" in table.columns
        why = "no run_key column"
    except Exception as e:  # noqa: BLE001 - pandas raises parser, decode and OS errors
        ok, why = False, first_line(e)
    if not ok:
        raise InputError(f"results_dir={results_dir}: {TABLE} is not a results table ({why}): "
                         "move it aside or choose another results_dir")


def model_stage_bytes(spec, params: int) -> dict[str, int]:
    """Bytes the run's model-writing stages put in the cache, estimated from parameter counts:
    the pruned and recovered weights, and the recovery checkpoints (two kept, with AdamW state
    for full-parameter phases) that exist until the recovered entry is complete."""
    dtype = resolve_dtype(spec.model.dtype, resolve_device(spec.model.device))
    width = torch.empty((), dtype=dtype).element_size()
    ratio = getattr(spec.prune, "ratio", None)
    kept = int(params * (1 - ratio)) if spec.prune.name != "none" and ratio else params
    out = {}
    if spec.prune.name != "none":
        out["pruned"] = kept * width
    if spec.recover.name != "none":
        full = any(p.full_parameters for p in METHODS.get(spec.recover.name).phases)
        out["recovered"] = kept * width + (2 * kept * (width + 8) if full else 0)
    return out


def check_disk(root: str | Path, needs: dict[str, int]) -> None:
    """Enough free space under the cache `root` for `needs` ({stage: bytes})."""
    total = sum(needs.values())
    if not total:
        return
    existing = Path(root).absolute()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < total:
        parts = ", ".join(f"{k} {v / 2**30:.1f}" for k, v in needs.items())
        raise InputError(f"cache_dir={root}: about {total / 2**30:.1f} GiB needed ({parts}) but "
                         f"{free / 2**30:.1f} GiB free: free space or set cache_dir to a larger "
                         "disk")

"""Texts a run reads (evaluation, calibration, training), checked before any model loads: they
exist, read as UTF-8 documents, parse (JSONL lines, Alpaca records) and hold enough tokens."""

from __future__ import annotations

import json
from pathlib import Path

from harness.assets import AssetError
from harness.data import protocol
from harness.validation.errors import InputError, first_line

_texts: set[tuple] = set()  # (source, key, window, per_document, windows) that passed


def check_text(source: str, key: str, tokenizer, window: int, window_key: str,
               per_document: bool = False, windows: int = 1) -> None:
    """The source reads as UTF-8 documents with at least `windows` windows of `window` tokens
    (in one document when `per_document`, as calibration windows are cut from single
    documents)."""
    if (source, key, window, per_document, windows) in _texts:
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
        if count >= window * windows:
            _texts.add((source, key, window, per_document, windows))
            return
    where = "its longest document has" if per_document else "it has"
    need = f"one window of {window_key} needs {window}" if windows == 1 else (
        f"{windows} windows of {window_key}={window} need {window * windows} (a PPL error bar "
        "needs two windows)")
    raise InputError(f"{key}: {source} is too short: {where} {count} tokens, {need}: use a "
                     f"longer text or a smaller {window_key}")


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
    """recover.data: an Alpaca .json list, or text with at least one recover.seq_len window;
    a directory or glob holds shards, a hub dataset (hf:NAME) is reachable."""
    from harness.recovery.corpus import SHARD_SUFFIXES, is_hub, shard_files

    path = Path(cfg.data)
    if is_hub(cfg.data):
        check_hub_dataset(":".join(p for p in (cfg.data, cfg.data_config, cfg.split) if p),
                          "recover.data")
        return
    if path.is_dir() or (not path.exists() and any(c in str(path) for c in "*?[")):
        if not shard_files(cfg.data):
            raise InputError(f"recover.data: {path} holds no {'/'.join(SHARD_SUFFIXES)} shards")
        return
    if path.suffix == ".parquet":
        if not path.is_file():
            raise InputError(f"recover.data: {path} does not exist")
        return
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


def check_repetition(spec, tokenizer) -> None:
    """A budget above the training corpus is refused unless recover.epochs_ok. The corpus's
    tokens are counted exactly: from its prepared cache entry, in memory for a small corpus
    (nothing written), else by preparing the entry that training then reads."""
    import os

    from harness.assets import cache_root
    from harness.cache.store import StageCache
    from harness.recovery.corpus import count_tokens
    from harness.recovery.run import repetition, training_examples

    cfg = spec.recover
    if cfg.epochs_ok:
        return
    try:
        if str(cfg.data).endswith(".json"):
            tokens = len(training_examples(cfg, tokenizer=tokenizer)) * cfg.seq_len
        else:
            cache = StageCache(spec.cache_dir or cache_root() / "stages")
            tokens = count_tokens(cfg, tokenizer, cache)
    except (OSError, ValueError) as e:
        raise InputError(f"recover.data: {first_line(e)}") from None
    _, refusal = repetition(cfg, tokens, int(os.environ.get("WORLD_SIZE", "1")))
    if refusal:
        raise InputError(refusal)

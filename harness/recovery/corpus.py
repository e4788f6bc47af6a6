"""Training corpora through HF `datasets`, tokenized once into a cached memory-mapped token file.

`recover.data` is one of:
- `wiki_train` (the protocol split);
- a `.txt` (documents separated by blank lines), `.jsonl` or `.parquet` file (`recover.text_field`);
- a directory of such shards (every one below it, sorted by relative path) or a glob of them;
- a hub dataset `hf:NAME` (`recover.data_config`, `recover.split`, `recover.text_field`),
  streamed when the hub is reachable.

Documents arrive through `datasets.load_dataset(..., streaming=True)`, one at a time, in order;
each is tokenized without special tokens and documents are joined by the separator's tokens as
they stand between two documents joined with "\n\n", which is the protocol's joined
tokenization for byte-level BPE tokenizers (SmolLM2 on wiki_train: all 430,593 ids equal).
wiki_train itself is tokenized joined, as the protocol says, for every tokenizer. The
ids go straight to `tokens.bin` (uint16 when the vocabulary fits, else uint32) in a stage-cache
entry `corpus/<key>` keyed by the data's content (`corpus_identity`) and the tokenizer's
(`tokenizer_identity`); one process prepares a key (rank 0, under the key's lock) and every
other rank or run waits and maps the same file. Training reads `PackedCorpus`: `[n, seq_len]`
blocks as a view of the mapped file, so memory does not grow with the corpus and one file serves
every `recover.seq_len`.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.data import protocol
from harness.data.text import source_identity
from harness.io import content_digest

SHARD_SUFFIXES = (".txt", ".jsonl", ".parquet")
BUILDERS = {".txt": "text", ".jsonl": "json", ".parquet": "parquet"}
TOKENS, FORMAT = "tokens.bin", 1
BATCH = 256  # documents tokenized per call (the fast tokenizer spreads a batch over threads)


def is_hub(source: str) -> bool:
    return str(source).startswith("hf:")


def is_local_corpus(source: str) -> bool:
    """A file, directory or glob of text shards (not wiki_train, not the hub, not Alpaca .json)."""
    return source != "wiki_train" and not is_hub(source) and not str(source).endswith(".json")


def shard_files(source: str) -> list[Path]:
    """The shards of a local corpus in training order ([] when none match)."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file() and p.suffix in SHARD_SUFFIXES]
        return sorted(found, key=lambda p: p.relative_to(path).as_posix())
    matches = [Path(p) for p in sorted(glob.glob(str(source), recursive=True))]
    return [p for p in matches if p.is_file() and p.suffix in SHARD_SUFFIXES]


def corpus_identity(cfg) -> str:
    """What a corpus is keyed by: wiki_train and a single file exactly as before this module
    (its name; `sha256:<hex><suffix>` of its bytes), several shards by the sha256 and suffix of
    each in order (names and places do not matter), a hub dataset by its id, config and split."""
    source = str(cfg.data)
    if is_hub(source):
        return f"{source}:{cfg.data_config or ''}:{cfg.split}"
    if source == "wiki_train" or Path(source).is_file() or not is_local_corpus(source):
        return source_identity(source)
    shards = shard_files(source)
    if not shards:
        return source  # refused by validation
    parts = "\n".join(f"{content_digest(p)}{p.suffix}" for p in shards)
    return f"shards:{len(shards)}:sha256:{hashlib.sha256(parts.encode()).hexdigest()}"


def tokenizer_identity(tokenizer) -> str:
    """sha256 of the tokenizer's full definition (vocabulary, merges, normalisation)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(
        sorted(tokenizer.get_vocab().items()))
    return f"{type(tokenizer).__name__}:{hashlib.sha256(blob.encode()).hexdigest()[:32]}"


def corpus_key(cfg, tokenizer) -> dict:
    return {"data": corpus_identity(cfg), "text_field": cfg.text_field,
            "tokenizer": tokenizer_identity(tokenizer), "format": FORMAT}


# ---- documents ----------------------------------------------------------------------------
def _rows(builder: str, files: list[Path], field: str) -> Iterator[str]:
    from datasets import load_dataset

    extra = {"sample_by": "paragraph"} if builder == "text" else {}
    ds = load_dataset(builder, data_files=[str(f) for f in files], split="train",
                      streaming=True, **extra)
    for row in ds:
        text = row[field]
        if builder == "text":
            text = text.strip()
        if text:
            yield text


def documents(cfg) -> Iterator[str]:
    """The corpus's non-empty documents in order, one at a time."""
    source = str(cfg.data)
    if source == "wiki_train":
        yield from protocol.split_documents(source)
        return
    if is_hub(source):
        from datasets import load_dataset

        ds = load_dataset(source[3:], cfg.data_config, split=cfg.split, streaming=True)
        for row in ds:
            if row[cfg.text_field]:
                yield row[cfg.text_field]
        return
    shards = shard_files(source)
    if not shards:
        raise FileNotFoundError(f"recover.data={source}: no {'/'.join(SHARD_SUFFIXES)} shards")
    run: list[Path] = []
    for shard in [*shards, None]:  # consecutive shards of one format share one reader
        if run and (shard is None or shard.suffix != run[0].suffix):
            field = "text" if run[0].suffix == ".txt" else cfg.text_field
            yield from _rows(BUILDERS[run[0].suffix], run, field)
            run = []
        if shard is not None:
            run.append(shard)


def separator_ids(tokenizer) -> list[int]:
    """The ids "\n\n" becomes between two documents (not alone: BPE merges it differently)."""
    def enc(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    both, left, right = enc("a\n\nb"), enc("a"), enc("b")
    if both[:len(left)] == left and both[len(both) - len(right):] == right:
        return both[len(left):len(both) - len(right)]
    return enc("\n\n")


def token_stream(docs: Iterator[str], tokenizer) -> Iterator[np.ndarray]:
    """Chunks of the joined corpus's ids, a batch of documents at a time."""
    sep = separator_ids(tokenizer)
    first = True
    batch: list[str] = []

    def flush():
        nonlocal first
        out = []
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            if not first:
                out.extend(sep)
            out.extend(ids)
            first = False
        batch.clear()
        return np.asarray(out, dtype=np.int64)

    for doc in docs:
        batch.append(doc)
        if len(batch) == BATCH:
            yield flush()
    if batch:
        yield flush()


def _protocol_ids(cfg, tokenizer) -> list[np.ndarray] | None:
    """wiki_train exactly as the protocol tokenizes it (joined, once: 430,593 SmolLM2 ids), so
    every tokenizer, SentencePiece ones too, trains on the stream its earlier results did."""
    if str(cfg.data) != "wiki_train":
        return None
    from harness.data.text import token_ids

    return [token_ids("wiki_train", tokenizer).numpy()]


def token_dtype(tokenizer) -> np.dtype:
    return np.dtype(np.uint16 if len(tokenizer) <= 2**16 else np.uint32)


def write_tokens(cfg, tokenizer, out_dir: Path) -> dict:
    """Tokenize the corpus into `out_dir/tokens.bin`; return its metadata."""
    dtype = token_dtype(tokenizer)
    count = 0
    chunks = _protocol_ids(cfg, tokenizer) or token_stream(documents(cfg), tokenizer)
    with open(out_dir / TOKENS, "wb") as f:
        for chunk in chunks:
            f.write(chunk.astype(dtype).tobytes())
            count += chunk.size
    if count == 0:
        raise ValueError(f"recover.data={cfg.data} holds no text")
    return {"tokens": count, "dtype": dtype.name, "identity": corpus_identity(cfg)}


# ---- the prepared corpus --------------------------------------------------------------------
@dataclass
class Prepared:
    path: Path  # tokens.bin
    tokens: int
    dtype: str

    def ids(self) -> np.memmap:
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.tokens,))


def prepare(cfg, tokenizer, cache) -> Prepared:
    """The corpus's token file: from the cache, or tokenized now by rank 0 under the key's lock
    while the other ranks (and any other run needing the same key) wait."""
    from harness.distributed import on_main

    def get():
        path, entry = cache.get_or_compute(
            "corpus", corpus_key(cfg, tokenizer), lambda tmp: write_tokens(cfg, tokenizer, tmp))
        return str(path), entry["meta"]

    path, meta = on_main(get)
    return Prepared(Path(path) / TOKENS, int(meta["tokens"]), meta["dtype"])


COUNT_IN_MEMORY_BYTES = 256 << 20  # below this, validation counts tokens without writing
_counted: dict[str, int] = {}  # corpus key -> tokens counted in memory, per process


def count_tokens(cfg, tokenizer, cache) -> int:
    """The corpus's token count: from its cache entry, or counted by tokenizing a small local
    corpus (wiki_train, shards under 256 MiB) without writing anything, or by preparing the
    entry training will read anyway (a large or hub corpus)."""
    from harness.keys import config_key

    key = corpus_key(cfg, tokenizer)
    if cache.intact("corpus", config_key(key)):  # a damaged one is moved aside, redone
        return int(cache.meta("corpus", config_key(key))["meta"]["tokens"])
    source = str(cfg.data)
    if config_key(key) in _counted:
        return _counted[config_key(key)]
    if source == "wiki_train" or (not is_hub(source) and sum(
            p.stat().st_size for p in shard_files(source)) < COUNT_IN_MEMORY_BYTES):
        chunks = _protocol_ids(cfg, tokenizer) or token_stream(documents(cfg), tokenizer)
        count = sum(chunk.size for chunk in chunks)
        _counted[config_key(key)] = count
        return count
    return prepare(cfg, tokenizer, cache).tokens


class PackedCorpus:
    """`[n, seq_len]` training blocks as a view of a token file; every position is a target."""

    def __init__(self, ids, seq_len: int):
        self.ids, self.seq_len, self.tokens = ids, seq_len, len(ids)
        self.n = len(ids) // seq_len
        if self.n == 0:
            raise ValueError(f"corpus of {len(ids)} tokens is shorter than one block of {seq_len}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        block = torch.from_numpy(np.asarray(self.ids[j * self.seq_len:(j + 1) * self.seq_len],
                                            dtype=np.int64))
        return {"input_ids": block, "labels": block, "attention_mask": torch.ones_like(block)}

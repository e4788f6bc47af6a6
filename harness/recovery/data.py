"""Training data for recovery: packed token blocks, local text/JSONL, Alpaca instructions.

Everything ends up as `Examples`: `input_ids`, `labels` and `attention_mask` tensors of shape
[n, seq_len]. Plain text is packed (every position is a target); instruction data is one padded
example per record, with the prompt and the padding masked out of the labels (-100).
`CyclicDataset` hands a Trainer exactly `count` examples starting at `start`, wrapping around
when the corpus is smaller than the token budget. Text corpora (wiki_train, files, shards, the
hub) go through `corpus.py` instead: tokenized once into a cached memory-mapped file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from harness.data.text import token_ids

IGNORE = -100
ALPACA = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    ),
}


@dataclass
class Examples:
    """[n, seq_len] training examples; `labels` uses -100 for positions that are not targets."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[j], "labels": self.labels[j],
                "attention_mask": self.attention_mask[j]}


def budget_slice(ids: torch.Tensor, tokens: int) -> torch.Tensor:
    """The first `tokens` ids of a 1-D stream (all of it when the stream is shorter)."""
    return ids.reshape(-1)[:tokens]


def pack(ids: torch.Tensor, seq_len: int) -> Examples:
    """Cut a 1-D token stream into [n, seq_len] blocks (the last partial block is dropped)."""
    ids = ids.reshape(-1).long()
    n = ids.numel() // seq_len
    if n == 0:
        raise ValueError(f"corpus of {ids.numel()} tokens is shorter than one block of {seq_len}")
    blocks = ids[: n * seq_len].view(n, seq_len)
    return Examples(blocks, blocks, torch.ones_like(blocks))


def alpaca_prompt(record: dict) -> str:
    """The standard Alpaca prompt for an {instruction, input, output} record."""
    key = "prompt_input" if record.get("input") else "prompt_no_input"
    return ALPACA[key].format(instruction=record["instruction"], input=record.get("input", ""))


def encode_instructions(records: list[dict], tokenizer, seq_len: int) -> Examples:
    """Alpaca records -> padded examples; labels cover only the response (and EOS)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    rows_ids, rows_labels, rows_mask = [], [], []
    for record in records:
        prompt = bos + tokenizer.encode(alpaca_prompt(record), add_special_tokens=False)
        answer = tokenizer.encode(record["output"], add_special_tokens=False) + eos
        ids = (prompt + answer)[:seq_len]
        labels = ([IGNORE] * len(prompt) + answer)[:seq_len]
        if all(label == IGNORE for label in labels):
            continue  # prompt alone fills the window: nothing to learn from
        fill = seq_len - len(ids)
        rows_ids.append(ids + [pad or 0] * fill)
        rows_labels.append(labels + [IGNORE] * fill)
        rows_mask.append([1] * len(ids) + [0] * fill)
    if not rows_ids:
        raise ValueError(f"no instruction record has a response within seq_len={seq_len}")
    return Examples(torch.tensor(rows_ids), torch.tensor(rows_labels), torch.tensor(rows_mask))


def tokenize_documents(docs: list[str], tokenizer) -> torch.Tensor:
    """Documents joined by blank lines and tokenized once without special tokens (as wiki_train)."""
    return torch.tensor(tokenizer.encode("\n\n".join(docs), add_special_tokens=False))


def load_records(path: str | Path) -> list:
    """Text file -> [str]; .jsonl -> one JSON object per line; .json -> the JSON list."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recovery data file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        return [text]
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if path.suffix == ".json":
        records = json.loads(text)
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of Alpaca records")
        return records
    raise ValueError(f"unsupported recovery data file {path} (use .txt, .jsonl or .json)")


def load_examples(
    source: str, seq_len: int, train_ids=None, tokenizer=None, max_tokens: int | None = None
) -> Examples:
    """Examples for `source`: 'wiki_train' packs `train_ids` (by default its tokens, read with
    `tokenizer`; the first `max_tokens` of them); a path is read and tokenized."""
    if source == "wiki_train":
        if train_ids is None:
            if tokenizer is None:
                raise ValueError("recover.data=wiki_train needs train_ids or a tokenizer")
            train_ids = token_ids(source, tokenizer)
        if max_tokens is not None:
            train_ids = budget_slice(train_ids, max_tokens)
        return pack(train_ids, seq_len)
    if tokenizer is None:
        raise ValueError(f"recover.data={source!r} needs a tokenizer")
    records = load_records(source)
    if all(isinstance(r, str) for r in records):
        return pack(tokenize_documents(records, tokenizer), seq_len)
    if all(isinstance(r, dict) and "instruction" in r and "output" in r for r in records):
        return encode_instructions(records, tokenizer, seq_len)
    if all(isinstance(r, dict) and "text" in r for r in records):
        return pack(tokenize_documents([r["text"] for r in records], tokenizer), seq_len)
    raise ValueError(f"{source}: records need a 'text' field or 'instruction' and 'output'")


class CyclicDataset(Dataset):
    """`count` examples starting at `start`, wrapping around the corpus (`Examples` in memory or
    a memory-mapped `corpus.PackedCorpus`); validation refuses a wrap the user did not allow."""

    def __init__(self, examples, start: int = 0, count: int | None = None):
        self.examples, self.start = examples, start
        self.count = len(examples) if count is None else count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.count:
            raise IndexError(i)
        return self.examples[(self.start + i) % len(self.examples)]

"""The offline reference protocol's text splits and calibration sampler (PROTOCOL.md, v1).

- wiki_test: Wikipedia articles whose index is a multiple of 10; wiki_train: all others.
- c4_calib: the first half of the C4 documents; c4_test: the second half.
- calibration: 10 samples of 128 tokens from c4_calib, `random.Random(1234)`.
"""

from __future__ import annotations

import random
import re
from functools import cache

import torch

from harness.assets import text_file

SPLITS = ("wiki_train", "wiki_test", "c4_calib", "c4_test")
# The protocol's constants, spelled once: calibration (the stand-in for LLM-Pruner's and
# Shortened LLaMA's BookCorpus samples) and the perplexity window length.
CALIB_SOURCE, CALIB_SAMPLES, CALIB_SEQ_LEN, CALIB_SEED = "c4_calib", 10, 128, 1234
EVAL_SEQ_LEN = 128
_DOC = re.compile(r"<doc [^>]*>(.*?)</doc>", re.DOTALL)


@cache
def _wiki_articles() -> tuple[str, ...]:
    text = text_file("wiki").read_text(encoding="utf-8")
    return tuple(body.strip() for body in _DOC.findall(text))


@cache
def _c4_docs() -> tuple[str, ...]:
    lines = text_file("c4").read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


def split_documents(name: str) -> list[str]:
    """The documents of a protocol split, in file order."""
    if name in ("wiki_train", "wiki_test"):
        docs = _wiki_articles()
        test = name == "wiki_test"
        return [d for i, d in enumerate(docs) if (i % 10 == 0) == test]
    if name in ("c4_calib", "c4_test"):
        docs = _c4_docs()
        half = len(docs) // 2
        return list(docs[:half] if name == "c4_calib" else docs[half:])
    raise ValueError(f"unknown split {name!r}; choose from {SPLITS}")


def tokenize_documents(docs: list[str], tokenizer) -> torch.Tensor:
    """Documents joined with blank lines, tokenized once without special tokens (1-D ids)."""
    ids = tokenizer("\n\n".join(docs), add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(
    docs: list[list[int]], num_samples: int, seq_len: int, seed: int
) -> torch.Tensor:
    """The protocol's sampler: a document uniformly among those longer than `seq_len`, then a
    start offset uniformly in [0, len - seq_len), `num_samples` times from `random.Random(seed)`."""
    eligible = [d for d in docs if len(d) > seq_len]
    if not eligible:
        raise ValueError(f"no document is longer than {seq_len} tokens")
    rng = random.Random(seed)
    samples = []
    for _ in range(num_samples):
        doc = eligible[rng.randrange(len(eligible))]
        start = rng.randrange(len(doc) - seq_len)
        samples.append(doc[start : start + seq_len])
    return torch.tensor(samples, dtype=torch.long)


def calibration_ids(
    tokenizer, num_samples: int = CALIB_SAMPLES, seq_len: int = CALIB_SEQ_LEN,
    seed: int = CALIB_SEED,
) -> torch.Tensor:
    """[num_samples, seq_len] calibration windows drawn from c4_calib as the protocol fixes."""
    docs = [tokenizer(d, add_special_tokens=False)["input_ids"]
            for d in split_documents(CALIB_SOURCE)]
    return sample_windows(docs, num_samples, seq_len, seed)

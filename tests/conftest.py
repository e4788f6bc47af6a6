"""Shared test setup: no network, no W&B, and small helpers for tiny on-disk models."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run far faster on one thread, above all on a shared or busy CI machine; the
# variable also reaches the harness processes that some tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def tiny_dir(tmp_path):
    """A tiny random Llama (GQA) with a byte tokenizer, saved as an HF directory."""
    from harness.models.loader import save_model
    from harness.models.tiny import tiny_model, tiny_tokenizer

    return save_model(tiny_model("llama"), tiny_tokenizer(), tmp_path / "tiny")


@pytest.fixture
def text_file(tmp_path):
    """A small local text corpus (documents separated by blank lines)."""
    docs = [f"Document {i}: the quick brown fox jumps over the lazy dog {i} times." * 3
            for i in range(12)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs))
    return path

"""Pruned models where they are served: GGUF files for llama.cpp (`gguf_file.py`, the layer
layout in `layout.py`, the tokenizer in `vocab.py`) and DeciLM checkpoints for vLLM (`vllm.py`);
`run.py` exports a run dir (`harness export RUN_DIR`)."""


class ExportError(ValueError):
    """A model shape or setting an engine cannot hold: one line naming why."""

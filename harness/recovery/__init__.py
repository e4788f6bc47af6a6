"""Recovery (retraining after pruning): LoRA, CPT, CPT then LoRA, and KD on one token budget.

`registry` holds the methods (one file each in `methods/`), `config` their shared settings,
`run` the budget and phase loop, `trainer` the HF Trainer wiring every phase uses, `data` the
training examples, `fsdp` sharded training.
"""

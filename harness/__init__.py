"""Width vs depth structured pruning of LLMs, with recovery and evaluation on one protocol."""

__version__ = "0.1.0"

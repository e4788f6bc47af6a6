"""Model loading, shapes, parameter counts and uneven (width-pruned) skeletons."""

import inspect


def cache_kwarg(model) -> str:
    """The forward() keyword that takes a KV cache: `cache` in newer transformers 5.x (which
    deprecates `past_key_values`, to be removed in 5.40), `past_key_values` before."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"

"""Architecture adapters: how the harness finds its way around each decoder family.

Pruning, scoring, efficiency figures, LoRA targets and the uneven loader reach a layer's modules
only through `adapter_for(model)`; no other module names a projection. An adapter is chosen by
`config.model_type`; an unknown type fails with one line naming the supported families
(`check_supported`, called before any weights load).

Adding a family is one file in this package plus a tiny config in `harness/models/tiny.py`
(which the family-parametrized equivalence tests pick up):

    from harness.models.adapters import register
    from harness.models.adapters.base import DecoderAdapter

    @register("my_model_type")
    class MyAdapter(DecoderAdapter):
        mlp_norms = (...)          # override only what differs from Llama (see base.py)

Every module of this package registers itself when the package is imported (bottom of this
file), so nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil

from harness.models.adapters.base import DecoderAdapter

ADAPTERS: dict[str, DecoderAdapter] = {}


def register(*model_types: str):
    """Class decorator: one adapter instance serves every listed `config.model_type`."""

    def wrap(cls):
        adapter = cls()
        adapter.model_types = model_types
        for t in model_types:
            if t in ADAPTERS:
                raise ValueError(f"model_type {t!r} has two adapters")
            ADAPTERS[t] = adapter
        return cls

    return wrap


def supported() -> tuple[str, ...]:
    return tuple(sorted(ADAPTERS))


def check_supported(model_type: str) -> None:
    """One-line ValueError for a model_type no adapter covers."""
    if model_type not in ADAPTERS:
        raise ValueError(f"unsupported architecture {model_type!r}; supported model types: "
                         f"{', '.join(supported())}")


def adapter_for(model_or_config) -> DecoderAdapter:
    """The adapter of a causal LM (also peft-wrapped) or of its config."""
    config = getattr(model_or_config, "config", model_or_config)
    check_supported(config.model_type)
    return ADAPTERS[config.model_type]


for _module in pkgutil.iter_modules(__path__):  # each family module registers itself
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

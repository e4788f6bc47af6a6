"""Registries: every axis of variation is a table of named entries that add themselves.

Depth and width criteria, pruning methods, recovery methods, evaluations and model families each
have one `Registry`. An entry is a small frozen dataclass that says what it runs, what it needs
and which config fields determine its result; the rest of the harness asks the registry, never
compares names. Built-in entries register when the modules named by `builtins` are imported
(on first use). Your own entries register when your module is imported: name it in the
`HARNESS_PLUGINS` environment variable (comma-separated module names) or in the
`harness.plugins` entry-point group of an installed package, and `load_plugins()` (every
harness command calls it before composing a config) imports it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")
PLUGIN_GROUP = "harness.plugins"


class Registry(Generic[T]):
    """name -> entry. `kind` names the axis in messages ("depth criterion", "recovery method")
    and `key` the config key that picks an entry (`prune.criterion`, `recover`)."""

    def __init__(self, kind: str, key: str, builtins: tuple[str, ...] | str = ()):
        self.kind, self.key = kind, key
        self.builtins = (builtins,) if isinstance(builtins, str) else builtins
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        name = entry.name
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise ValueError(f"{self.key}={name!r} is not a {self.kind}; choose from "
                             f"{', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        self._load()
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        self._load()
        return iter(list(self._entries.values()))

    def _load(self) -> None:
        for module in self.builtins:  # the modules that register the built-in entries
            importlib.import_module(module)


_loaded: set[str] = set()


def load_plugins() -> list[str]:
    """Import the modules named in HARNESS_PLUGINS and in the `harness.plugins` entry points
    (once each); returns their names. A plugin that fails to import is an error naming it."""
    names = [n.strip() for n in os.environ.get("HARNESS_PLUGINS", "").split(",") if n.strip()]
    points = list(entry_points(group=PLUGIN_GROUP))
    for name in names:
        if name not in _loaded:
            _import(name, "HARNESS_PLUGINS")
            _loaded.add(name)
    for point in points:
        if point.value not in _loaded:
            try:
                point.load()
            except Exception as e:  # noqa: BLE001 - say which plugin, in one line
                raise ImportError(f"plugin {point.name} ({point.value}) failed to import: "
                                  f"{type(e).__name__}: {e}") from None
            _loaded.add(point.value)
    return names + [p.value for p in points]


def _import(name: str, where: str) -> None:
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - say which plugin, in one line
        raise ImportError(f"{where}: module {name!r} failed to import: "
                          f"{type(e).__name__}: {e}") from None

"""Which config fields determine results. Run keys and stage cache keys are built from them only.

Every config dataclass lists each of its fields in exactly one of two class attributes:

    DETERMINING      changing it can change a number the harness records (a score, a weight, a
                     metric), so it is part of the run key and of its stage's cache key
    NOT_DETERMINING  it changes only how the work is done (progress bars, checkpoint cadence,
                     evaluation batch sizes, where files go), so changing it reuses the cached
                     stages and replaces the same results row

A field listed in neither (or both) is an error: `key_fields()` raises and tests/test_keys.py
checks every schema, so a new field cannot slip into or out of the keys unnoticed. Adding a field:
put its name in one of the two tuples of its config class (a subclass lists only the fields it
adds; the tuples of its bases count too). A field that matters only in some settings (the seed
of a non-random criterion) is still DETERMINING; the class's `key_fields()` drops it where it
has no effect. `config_key` hashes what the keys hold; harness/identity.py builds them.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import types
import typing
from dataclasses import fields, is_dataclass
from typing import ClassVar


def config_key(obj) -> str:
    """Stable 16-hex-digit hash of a JSON-able config (dict key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Keyed:
    """Mixin for config dataclasses: declares which fields determine results."""

    DETERMINING: ClassVar[tuple[str, ...]] = ()
    NOT_DETERMINING: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def determining(cls) -> tuple[str, ...]:
        """DETERMINING of this class and its bases, bases first."""
        return _declared(cls, "DETERMINING")

    @classmethod
    def not_determining(cls) -> tuple[str, ...]:
        return _declared(cls, "NOT_DETERMINING")

    def key_fields(self) -> dict:
        """{field: value} of the determining fields; a nested config gives its own key_fields."""
        check_declared(type(self))
        return {name: _key_value(getattr(self, name)) for name in self.determining()}


def _declared(cls, attr: str) -> tuple[str, ...]:
    names = [n for base in reversed(cls.__mro__) for n in base.__dict__.get(attr, ())]
    return tuple(dict.fromkeys(names))


def _key_value(value):
    if isinstance(value, Keyed):
        return value.key_fields()
    if isinstance(value, list | tuple):
        return list(value)
    return value


def undeclared(cls) -> list[str]:
    """Fields of `cls` not in exactly one of DETERMINING / NOT_DETERMINING, and names listed
    there that are not fields."""
    names = [f.name for f in fields(cls)]
    det, non = cls.determining(), cls.not_determining()
    bad = [n for n in names if (n in det) + (n in non) != 1]
    return bad + [n for n in (*det, *non) if n not in names]


def check_declared(cls) -> None:
    bad = undeclared(cls)
    if bad:
        raise TypeError(f"{cls.__name__}: list {bad} in exactly one of DETERMINING or "
                        "NOT_DETERMINING (see harness/keys.py)")


# ---- rebuilding a config from a results row --------------------------------------------------
def from_columns(cls, columns: dict, prefix: str, **fixed):
    """An instance of the config dataclass `cls` from flat results-table cells `<prefix><field>`
    (CSV values: floats for ints, "[1, 16]" for lists, NaN for None); fields without a cell keep
    their defaults, nested configs are read from `<prefix><field>.`; `fixed` wins over both."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        kind = hints[f.name]
        if is_dataclass(kind):
            values[f.name] = from_columns(kind, columns, f"{prefix}{f.name}.")
        elif f"{prefix}{f.name}" in columns:
            values[f.name] = coerce(columns[f"{prefix}{f.name}"], kind)
    return cls(**{**values, **fixed})


def coerce(value, kind):
    """A table cell as the Python value of annotation `kind` (None for an empty cell)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return coerce(value, args[0])
    if typing.get_origin(kind) is list:
        items = ast.literal_eval(value) if isinstance(value, str) else value
        return [coerce(v, args[0]) for v in items]
    if kind is bool:
        return value if isinstance(value, bool) else str(value).lower() in ("true", "1", "1.0")
    if kind is int:
        return int(float(value))
    if kind is float:
        return float(value)
    return str(value)

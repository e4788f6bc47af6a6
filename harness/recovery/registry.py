"""Recovery methods as a registry: each one file in harness/recovery/methods/.

A method is one or more training phases run in order on one token budget. Its entry declares
the config class it reads (a `RecoverConfig` subclass: its fields, validation and determining
fields), its phases (each a runner `(model, PhaseContext) -> (model, metrics)`), how the budget's
optimizer steps are split among them, and what it needs besides the model: `training_data`
(tokens of `recover.data`) and `teacher` (the dense model, loaded on every rank).

Adding a method: one file in harness/recovery/methods/ (or any module named in HARNESS_PLUGINS)
that calls `register(RecoveryMethod(...))`, and a YAML `conf/recover/<name>.yaml`. The `recover`
config group's schema is the union of every registered method's fields, so a sweep over methods
may set any of them; each run keeps only its own method's (`settings`).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path

from torch import nn

from harness.recovery.config import RecoverConfig
from harness.registry import Registry

NEEDS = ("training_data", "teacher")


@dataclass
class PhaseContext:
    """What a phase runner gets besides the model."""

    cfg: RecoverConfig
    dataset: object  # a torch Dataset of {input_ids, labels, attention_mask}
    out_dir: Path  # the phase's own directory: checkpoints and its train_log.csv
    steps: int  # optimizer steps of this phase
    report_to: str | list[str] = "none"
    callbacks: list = field(default_factory=list)
    teacher: nn.Module | None = None
    eval_dataset: object = None  # held-out windows for the curve (recover.eval_every > 0)


@dataclass(frozen=True)
class Phase:
    """One Trainer run: `name` is its directory, metrics prefix and train_log.csv label;
    `full_parameters`: it trains every weight (its checkpoints hold AdamW state for each)."""

    name: str
    run: Callable[[nn.Module, PhaseContext], tuple[nn.Module, dict]]
    full_parameters: bool = True


def all_steps(cfg: RecoverConfig, total: int) -> list[int]:
    return [total]


@dataclass(frozen=True)
class RecoveryMethod:
    name: str
    config: type[RecoverConfig]
    phases: tuple[Phase, ...] = ()
    needs: frozenset[str] = frozenset()
    split: Callable[[RecoverConfig, int], list[int]] = all_steps  # steps per phase

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"recovery method {self.name!r} needs unknown {sorted(unknown)}; "
                             f"choose from {', '.join(NEEDS)}")
        if not issubclass(self.config, RecoverConfig):
            raise TypeError(f"recovery method {self.name!r}: config must subclass RecoverConfig")


METHODS: Registry[RecoveryMethod] = Registry("recovery method", "recover",
                                             builtins="harness.recovery.methods")
METHODS.register(RecoveryMethod("none", RecoverConfig))
register = METHODS.register


def schema() -> type:
    """The `recover` group's schema: every registered method's fields in one dataclass."""
    classes = list(dict.fromkeys(m.config for m in METHODS))
    base = {f.name for f in fields(RecoverConfig)}
    own = [(f.name, typing.get_type_hints(cls)[f.name], f) for cls in classes
           for f in fields(cls) if f.name not in base]
    seen, extra = set(), []
    for name, kind, f in own:
        if name not in seen:
            seen.add(name)
            extra.append((name, kind, field(default=f.default, default_factory=f.default_factory)))
    return make_dataclass("RecoverSchema", extra, bases=(RecoverConfig,))


def settings(name: str = "none", **values) -> RecoverConfig:
    """Method `name`'s typed config from `recover.*` values; fields other methods read are
    dropped, a field no method has is an error."""
    method = METHODS.get(name)
    own = {f.name for f in fields(method.config)}
    known = {f.name for f in fields(schema())}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"recover.{unknown[0]} is not a recovery setting")
    return method.config(name=name, **{k: v for k, v in values.items() if k in own})


def narrow(cfg) -> RecoverConfig:
    """A composed `recover` config (the schema's instance) as its method's own class."""
    return settings(**{f.name: getattr(cfg, f.name) for f in fields(cfg)})

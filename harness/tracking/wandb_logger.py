"""W&B logging that never kills a run: every call is guarded, metrics.json stays the truth.

Mode comes from `logger.mode` (offline by default, no account needed), overridden by the
WANDB_MODE environment variable (tests set it to `disabled`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from harness.keys import Keyed

log = logging.getLogger(__name__)


@dataclass
class LoggerConfig(Keyed):
    DETERMINING = ()
    NOT_DETERMINING = ("name", "mode", "project", "entity")

    name: str = "wandb"  # wandb | none
    mode: str = "offline"  # offline | online | disabled
    project: str = "width-vs-depth"
    entity: str | None = None

    def validate(self) -> None:
        if self.name not in ("wandb", "none"):
            raise ValueError(f"logger.name must be wandb or none, got {self.name!r}")
        if self.mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode must be offline, online or disabled, got {self.mode!r}")


class WandbRun:
    """Thin guarded wrapper around a wandb run (a no-op when disabled or when wandb fails)."""

    def __init__(self, cfg: LoggerConfig, config: dict, group: str, name: str, run_dir: str):
        self.run = None
        mode = os.environ.get("WANDB_MODE", cfg.mode)
        if cfg.name == "none" or mode == "disabled":
            return
        try:
            import wandb

            self.run = wandb.init(
                project=cfg.project, entity=cfg.entity, mode=mode, config=config,
                group=group, name=name, dir=run_dir, reinit="finish_previous",
            )
        except Exception as e:  # noqa: BLE001 - tracking must never kill a run
            log.warning("W&B disabled for this run: %s", e)

    def log(self, metrics: dict) -> None:
        self._guard(lambda: self.run.log(metrics))

    def log_table(self, key: str, dataframe) -> None:
        def _do():
            import wandb

            self.run.log({key: wandb.Table(dataframe=dataframe)})

        self._guard(_do)

    def log_images(self, images: dict) -> None:
        def _do():
            import wandb

            self.run.log({k: wandb.Image(str(v)) for k, v in images.items()})

        self._guard(_do)

    def finish(self) -> None:
        self._guard(lambda: self.run.finish())

    def _guard(self, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            log.warning("W&B call failed (ignored): %s", e)


def flatten(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become strings so they fit one table cell."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = str(list(v))
        else:
            out[key] = v
    return out

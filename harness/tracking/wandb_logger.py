"""W&B logging that never kills a run: every call is guarded, metrics.json stays the truth.

Mode comes from `logger.mode` (offline by default, no account needed), overridden by the
WANDB_MODE environment variable (tests set it to `disabled`). A run's W&B run is opened before
training, so the HF Trainer's own `WandbCallback` (`report_to="wandb"`) reports the loss,
learning rate and grad norm step by step into it. Runs of one sweep share a group
(`<experiment>-<sweep id>`), `job_type` is the last stage the run computes (eval, prune,
recover) and the tags name the method, criterion and recovery. At the end each run logs its
results row, prune plan and resolved config as artifacts, and its model directory as a
reference (`file://`, no upload unless `logger.upload_model=true`). W&B's console output
(banner, history sparklines, summary) is silent unless `logger.console=true`.

One W&B run per results row: its id is the row's run key, so re-running a finished config
opens nothing (the caller skips it) and a run that recomputes a stage resumes the same W&B run
(`resume="allow"`). A training curve replayed from a cached recovery (train_log.csv) is logged
under the Trainer's own names, the ones a live run has (`REPLAY_NAMES`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from harness.keys import Keyed

log = logging.getLogger(__name__)


@dataclass
class LoggerConfig(Keyed):
    DETERMINING = ()
    NOT_DETERMINING = ("name", "mode", "project", "entity", "group", "console", "upload_model")

    name: str = "wandb"  # wandb | none
    mode: str = "offline"  # offline | online | disabled
    project: str = "width-vs-depth"
    entity: str | None = None
    group: str | None = None  # None: <experiment>-<sweep id>
    console: bool = False  # W&B's own console lines (banner, sparklines, summary)
    upload_model: bool = False  # upload the model's files instead of a file:// reference

    def validate(self) -> None:
        if self.name not in ("wandb", "none"):
            raise ValueError(f"logger.name must be wandb or none, got {self.name!r}")
        if self.mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode must be offline, online or disabled, got {self.mode!r}")


def sweep_group(experiment: str | None, sweep_dir: str | None) -> str:
    """`<experiment>-<sweep id>`: the sweep id is the multirun dir's name (its launch time);
    a single run (no sweep dir) is grouped by its experiment alone."""
    experiment = experiment or "default"
    return f"{experiment}-{Path(sweep_dir).name}" if sweep_dir else experiment


def run_tags(spec) -> list[str]:
    """Method, criterion and recovery of a run, e.g. ['depth', 'criterion:ppl', 'recover:lora']."""
    tags = [spec.prune.name if spec.prune.name != "none" else "dense"]
    criterion = getattr(spec.prune, "criterion", None)
    if criterion:
        tags.append(f"criterion:{criterion}")
    tags.append(f"recover:{spec.recover.name}")
    return tags


def job_type(spec) -> str:
    """The last stage that makes the run's model: recover, prune, or eval (the dense model)."""
    if spec.recover.name != "none":
        return "recover"
    return "prune" if spec.prune.name != "none" else "eval"


# train_log.csv column -> the name HF's WandbCallback gives the same value in a live run
REPLAY_NAMES = {"step": "train/global_step", "loss": "train/loss", "lr": "train/learning_rate",
                "tokens_seen": "train/num_input_tokens_seen", "phase": "train/phase"}


class WandbRun:
    """Thin guarded wrapper around a wandb run (a no-op when disabled, skipped, or when wandb
    fails). `run_id`: the results row's run key."""

    def __init__(self, cfg: LoggerConfig, config: dict, group: str, name: str, run_dir: str,
                 job_type: str | None = None, tags: list[str] | tuple = (),
                 run_id: str | None = None, skip: bool = False):
        self.run, self.cfg = None, cfg
        mode = os.environ.get("WANDB_MODE", cfg.mode)
        if cfg.name == "none" or mode == "disabled" or skip:
            return
        try:
            import wandb

            quiet = not cfg.console
            settings = wandb.Settings(silent=quiet, quiet=quiet, show_info=not quiet)
            self.run = wandb.init(
                project=cfg.project, entity=cfg.entity, mode=mode, config=config,
                group=cfg.group or group, name=name, dir=run_dir, job_type=job_type,
                tags=list(tags), settings=settings, reinit="finish_previous",
                id=run_id, resume="allow" if run_id else None,
            )
        except Exception as e:  # noqa: BLE001 - tracking must never kill a run
            log.warning("W&B disabled for this run: %s", e)

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, metrics: dict) -> None:
        self._guard(lambda: self.run.log(metrics))

    def replay_curve(self, csv_path: Path) -> None:
        """A cached recovery's loss curve (train_log.csv) under the live run's metric names."""
        if self.run is None or not Path(csv_path).exists():
            return
        import pandas as pd

        for row in pd.read_csv(csv_path).to_dict("records"):
            self.log({REPLAY_NAMES.get(k, f"train/{k}"): v for k, v in row.items()})

    def log_table(self, key: str, dataframe) -> None:
        def _do():
            import wandb

            self.run.log({key: wandb.Table(dataframe=_cells(dataframe))})

        self._guard(_do)

    def log_images(self, images: dict) -> None:
        def _do():
            import wandb

            self.run.log({k: wandb.Image(str(v)) for k, v in images.items()})

        self._guard(_do)

    def log_run_artifacts(self, key: str, row: dict, run_dir: Path, model_dir: Path | None,
                          plan: Path | None = None) -> None:
        """`results-<key>` (the row as a table), `prune_plan-<key>`, `config-<key>` and
        `model-<key>` (a file:// reference to the model dir, or its files when
        `logger.upload_model`), each only when it exists."""
        def _do():
            import pandas as pd
            import wandb

            short = key[:12]
            art = wandb.Artifact(f"results-{short}", type="results")
            art.add(wandb.Table(dataframe=_cells(pd.DataFrame([row]))), "row")
            self.run.log_artifact(art)
            files = {"prune_plan": plan,
                     "config": run_dir / "config.yaml"}
            for kind, path in files.items():
                if path is not None and path.exists():
                    art = wandb.Artifact(f"{kind}-{short}", type=kind)
                    art.add_file(str(path))
                    self.run.log_artifact(art)
            if model_dir is not None and model_dir.exists():
                art = wandb.Artifact(f"model-{short}", type="model")
                if self.cfg.upload_model:
                    art.add_dir(str(model_dir))
                else:
                    art.add_reference(model_dir.resolve().as_uri(), checksum=False)
                self.run.log_artifact(art)

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


def _cells(df):
    """A frame W&B's Table accepts: lists and other objects as strings, NaN as None."""
    df = df.copy()
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].map(lambda v: v if v is None or isinstance(v, (str, int, float, bool))
                                  else str(v))
    return df.astype(object).where(df.notna(), None)


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

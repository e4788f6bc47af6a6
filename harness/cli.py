"""Command line: `harness [hydra overrides]` runs one experiment (or a sweep with -m);
`harness report` prints the results table.

Examples:
    harness                                   # dense SmolLM2, PPL on wiki_test and c4_test
    harness prune=depth prune.ratio=0.2       # remove ~20% of the parameters as whole blocks
    harness -m experiment=quick               # the README's default sweep
    harness report                            # the results table, grouped
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from harness.config import apply_size_overrides, register_configs, validate
from harness.tracking.io import write_json_atomic, write_text_atomic
from harness.tracking.results import upsert_row
from harness.tracking.wandb_logger import WandbRun, flatten

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
log = logging.getLogger("harness")


def log_training_curve(tracker: WandbRun, csv_path: Path) -> None:
    """The recovery loss curve (step, loss, lr, tokens_seen) as W&B history."""
    if csv_path.exists():
        for row in pd.read_csv(csv_path).to_dict("records"):
            tracker.log({f"train/{k}": v for k, v in row.items()})


def run_experiment(cfg: DictConfig) -> dict:
    """Validate, run every stage, write config.yaml / metrics.json, add the results row."""
    from harness.pipeline import Run, run_identity
    from harness.sweeps.cache import config_key
    from harness.tracking.rows import result_row

    try:
        spec = validate(apply_size_overrides(cfg, HydraConfig.get().overrides.task))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    identity = run_identity(spec)
    key = config_key(identity)
    choices = HydraConfig.get().runtime.choices
    group = "-".join(f"{g}={choices[g]}" for g in ("prune", "recover") if g in choices)
    tracker = WandbRun(spec.logger, flatten(OmegaConf.to_container(cfg, resolve=True)),
                       group=group, name=f"{group}-{key[:8]}", run_dir=str(run_dir))
    run = Run(spec, run_dir)
    metrics = run.execute()
    write_json_atomic(run_dir / "metrics.json", metrics)
    write_json_atomic(run_dir / "stages.json", {"computed": run.cache.computed})
    upsert_row(cfg.results_dir, result_row(spec, identity, key, metrics, run_dir))
    log_training_curve(tracker, run_dir / "train_log.csv")
    tracker.log(metrics)
    tracker.finish()
    log.info("run %s done: %s", key, run_dir)
    return metrics


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        raise SystemExit(report_main(sys.argv[2:]))
    register_configs()
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_app)()


def _app(cfg: DictConfig) -> None:
    run_experiment(cfg)
    if HydraConfig.get().mode.name == "RUN":
        from harness.sweeps.report import print_table

        print_table(cfg.results_dir)


def report_main(argv: list[str] | None = None) -> int:
    from harness.sweeps.report import main as report

    return report(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()

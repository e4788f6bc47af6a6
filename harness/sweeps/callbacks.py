"""Hydra callbacks: at the end of a multirun, report what just ran."""

from __future__ import annotations

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class PrintResults(Callback):
    """After a sweep (all jobs have added their rows): print one table of this sweep's rows
    (the keys that vary, then the metrics); for a named experiment also write its report files
    (tables and figures) to results_dir; log the experiment's results to W&B as a Table."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from harness.distributed import is_main
        from harness.reporting.console import print_experiment, print_rows

        if not is_main():  # a sweep under torchrun: rank 0 reports
            return
        experiment = config.get("experiment", "default") or "default"
        sweep_dir = OmegaConf.select(config, "hydra.sweep.dir")
        if sweep_dir is None:  # called outside a Hydra sweep: the experiment's rows
            view = print_experiment(config.results_dir, experiment)
        else:
            view = print_rows(config.results_dir, sweep_dir, f"{experiment}, this sweep")
        files = []
        if experiment != "default":
            from harness.reporting.report import write_report

            files = write_report(config.results_dir, only=experiment)
            print(f"\nwrote {len(files)} report files to {config.results_dir} "
                  f"({experiment}.md, .tex, .csv and figures)")
        log_sweep_table(config, experiment, sweep_dir, view, files)


def log_sweep_table(config: DictConfig, experiment: str, sweep_dir, view, files) -> None:
    """One W&B run in the sweep's group: the sweep's table and the experiment's whole results
    (every column) as W&B Tables, and the report's figures."""
    from harness.reporting.console import rows_under
    from harness.tracking.results import by_experiment, read_table
    from harness.tracking.wandb_logger import LoggerConfig, WandbRun, sweep_group

    if config.get("logger") is None or sweep_dir is None:
        return
    logger = LoggerConfig(**OmegaConf.to_container(config.logger, resolve=True))
    if logger.name == "none":
        return
    group = sweep_group(experiment, sweep_dir)
    run = WandbRun(logger, {"experiment": experiment, "sweep_dir": str(sweep_dir)}, group=group,
                   name=f"{group}-summary", run_dir=str(sweep_dir), job_type="summary",
                   tags=["summary"])
    if not run.active:
        return
    run.log_table("sweep", view)
    table = dict(by_experiment(read_table(config.results_dir))).get(experiment)
    run.log_table("results", table if table is not None else
                  rows_under(config.results_dir, sweep_dir))
    run.log_images({p.stem: p for p in files if p.suffix == ".png"})
    run.finish()

"""Hydra callbacks: at the end of a multirun, report what just ran."""

from __future__ import annotations

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class PrintResults(Callback):
    """After a sweep (all jobs have added their rows): for a named experiment, print its paper
    table and write its tables and figures to results_dir; otherwise print the grouped table."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from harness.distributed import is_main
        from harness.sweeps.report import experiment_report, print_table

        if not is_main():  # a sweep under torchrun: rank 0 reports
            return

        experiment = config.get("experiment", "default")
        if experiment and experiment != "default":
            experiment_report(config.results_dir, experiment)
        else:
            print_table(config.results_dir)

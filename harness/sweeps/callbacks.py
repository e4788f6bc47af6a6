"""Hydra callbacks: at the end of a multirun, print the results table of what just ran."""

from __future__ import annotations

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class PrintResults(Callback):
    """After a sweep, print the grouped results table (all jobs have added their rows)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from harness.sweeps.report import print_table

        print_table(config.results_dir)

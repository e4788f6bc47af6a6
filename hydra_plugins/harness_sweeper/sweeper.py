"""A sweep is validated whole: every cell, before the first one runs.

Hydra's basic sweeper composes and runs cells one by one, so `-m prune.num_blocks=1,2,9` on a
6-layer model would run two cells, write their rows and cache entries, and fail on the third.
`ValidatingSweeper` is the basic sweeper (same cartesian product, same launch) that first
composes every cell and runs the harness's whole validation on it (harness.config.check_job:
every value and every input, no model loaded); a problem in any cell exits 2 with one line
naming the cell, having written nothing but Hydra's multirun.yaml.
"""

from dataclasses import dataclass
from typing import Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import open_dict, read_write
from omegaconf.errors import OmegaConfBaseException


@dataclass
class ValidatingSweeperConf:
    _target_: str = "hydra_plugins.harness_sweeper.sweeper.ValidatingSweeper"
    # no `from __future__ import annotations` here: Hydra runs this module outside sys.modules
    max_batch_size: Optional[int] = None  # noqa: UP045
    params: Optional[dict[str, str]] = None  # noqa: UP045


class ValidatingSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]):
        from harness.cli import fail
        from harness.config import check_job
        from harness.hydra_errors import one_line

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
        (cells,) = self.split_arguments(overrides, None)
        for i, cell in enumerate(cells):
            named = " ".join(c for c in cell if c.split("=", 1)[0] in swept)
            where = f"sweep cell {i} of {len(cells)} ({named})"
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(cell))
            except (HydraException, OmegaConfBaseException) as e:
                fail(f"{where}: {one_line(e, list(cell))}; nothing ran")
            hydra = cfg.hydra
            with read_write(cfg), open_dict(cfg):
                del cfg["hydra"]  # what the job itself gets
            try:
                check_job(cfg, hydra.runtime.choices, hydra.overrides.task, where=where)
            except ValueError as e:
                fail(f"{e}; nothing ran")
        return super().sweep(arguments)


# `hydra/sweeper=harness`, the default in conf/config.yaml (Hydra imports this module with
# every module of hydra_plugins when it starts)
ConfigStore.instance().store(group="hydra/sweeper", name="harness", node=ValidatingSweeperConf,
                             provider="harness")

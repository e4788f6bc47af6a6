"""Command line: `harness [hydra overrides]` runs one experiment (or a sweep with -m);
`harness report` prints the results table; `harness cache verify|gc` checks or trims the stage cache.

Examples:
    harness                                   # dense SmolLM2, PPL on wiki_test and c4_test
    harness prune=depth prune.ratio=0.2       # remove ~20% of the parameters as whole blocks
    harness -m experiment=quick               # the README's default sweep
    harness report                            # the results table, grouped
    harness export RUN_DIR --format gguf      # the run's model for llama.cpp (or vllm)
    harness cache verify                      # re-hash every cache entry, move bad ones aside
    harness cache gc                          # list entries no results row needs (--yes deletes)
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness import CONF_DIR, distributed
from harness.cache.store import NonFiniteResult, non_finite
from harness.config import check_job, register_configs
from harness.hydra_errors import one_line
from harness.io import write_json_atomic, write_text_atomic
from harness.registry import load_plugins
from harness.tracking.results import has_row, upsert_row
from harness.tracking.wandb_logger import (
    LoggerConfig,
    WandbRun,
    flatten,
    job_type,
    run_tags,
    sweep_group,
)
from harness.validation import check_disk, first_line, model_stage_bytes

log = logging.getLogger("harness")


def open_tracker(cfg: DictConfig, spec, key: str, run_dir: Path, main: bool,
                 skip: bool = False) -> WandbRun:
    """The run's W&B run (rank 0 only; none when `skip`): its id is the run key, grouped by
    experiment and sweep, typed by its last stage, tagged with method, criterion and recovery."""
    hc = HydraConfig.get()
    sweep_dir = hc.sweep.dir if hc.mode.name == "MULTIRUN" else None
    group = sweep_group(cfg.get("experiment"), sweep_dir)
    tags = run_tags(spec)
    return WandbRun(spec.logger if main else LoggerConfig(name="none"),
                    flatten(OmegaConf.to_container(cfg, resolve=True)), group=group,
                    name=f"{'-'.join(tags)}-{key[:8]}", run_dir=str(run_dir),
                    job_type=job_type(spec), tags=tags, run_id=key, skip=skip)


def fail(message, code: int = 2):
    """Print one `error:` line (rank 0 of several processes) and exit (2: bad input, nothing
    written; 1: the run failed)."""
    if distributed.is_main():
        print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def disk_full(error: BaseException) -> bool:
    """ENOSPC, also when a library (safetensors, torch) wraps it in its own exception."""
    while error is not None:
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def prepare(cfg: DictConfig, run_dir: Path):
    """The validated spec and its Run, or one error line and exit code 2 with nothing written."""
    from harness.pipeline import Run

    try:
        hc = HydraConfig.get()
        spec = check_job(cfg, hc.runtime.choices, hc.overrides.task)
        run = Run(spec, run_dir)
        needs = model_stage_bytes(spec, spec.dense_params)
        check_disk(run.cache.root, {s: needs[s] for s in run.uncached_model_stages()})
    except ValueError as e:
        fail(e)
    return spec, run


def run_experiment(cfg: DictConfig) -> dict:
    """Validate, run every stage, write config.yaml / metrics.json, add the results row.
    With several processes every rank runs this; only rank 0 writes anything (see
    harness.distributed), and only rank 0 opens a W&B run."""
    from harness.identity import run_identity
    from harness.keys import config_key
    from harness.recovery.trainer import NonFiniteLossError
    from harness.reporting.rows import result_row

    distributed.setup()  # SLURM jobs with several tasks arrive here without harness.cli.main
    main = distributed.is_main()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    spec, run = prepare(cfg, run_dir)
    if main:
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    identity = run_identity(spec)
    key = config_key(identity)
    # a finished config re-run computes nothing and changes no number: no second W&B run
    done = main and has_row(spec.results_dir, key) and run.fully_cached()
    tracker = open_tracker(cfg, spec, key, run_dir, main, skip=done)
    run.report_to = "wandb" if tracker.active else "none"  # the Trainer logs into this run
    try:
        metrics = run.execute()
        bad = non_finite(metrics)
        if bad:
            raise NonFiniteResult(f"metric {bad} is not finite (stage {bad.split('/')[0]})")
    except (NonFiniteResult, NonFiniteLossError) as e:
        tracker.finish()
        fail(f"{str(e).splitlines()[0]}; no results row was written", code=1)
    except Exception as e:
        if not disk_full(e):
            raise
        tracker.finish()  # the stage's temporary entry is already gone; finished stages stay
        fail(f"disk full ({first_line(e)}): free space or set cache_dir to a larger disk, then "
             "re-run; finished stages are kept, no results row was written", code=1)
    if not main:
        return metrics
    write_json_atomic(run_dir / "metrics.json", metrics)
    write_json_atomic(run_dir / "stages.json",
                      {"computed": run.cache.computed, "used": run.cache.used})
    run.cache.record_run(key, run_dir)
    row = result_row(spec, identity, key, metrics, run_dir)
    upsert_row(spec.results_dir, row)
    if not run.trained:  # the recovered model came from the cache: post its recorded curve
        tracker.replay_curve(run_dir / "train_log.csv")
    tracker.log(metrics)
    plan = run.pruned_dir / "prune_plan.json" if run.pruned_dir else None
    tracker.log_run_artifacts(key, row, run_dir, run.model_dir, plan)
    tracker.finish()
    if cfg.export.format != "none":
        from harness.export import ExportError
        from harness.export.run import export_run

        try:
            log.info("exported %s", export_run(run_dir, cfg.export.format, cfg.export.dtype))
        except ExportError as e:
            fail(f"the row is written, but export={cfg.export.format} failed: {e}")
    log.info("run %s done: %s", key, run_dir)
    return metrics


def main(argv: list[str] | None = None) -> None:
    """`harness [overrides]`, `harness report ...`, `harness cache verify|gc ...`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        raise SystemExit(report_main(argv[1:]))
    if argv[:1] == ["export"]:
        from harness.export.run import main as export_main

        raise SystemExit(export_main(argv[1:]))
    if argv[:1] == ["cache"]:
        from harness.cache.tools import main as cache_main

        raise SystemExit(cache_main(argv[1:]))
    try:
        load_plugins()
    except ImportError as e:
        fail(e)
    nproc = distributed.accelerate_cpu_processes()
    if nproc:
        distributed.relaunch_with_torchrun(nproc, argv)
    distributed.setup()
    register_configs()
    if not distributed.is_main():  # same run dir as rank 0, but its own log and no .hydra/
        argv = [*argv, "hydra.output_subdir=null", f"hydra.job.name=harness_rank{distributed.rank()}"]
    user_wants_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; composition errors become one line
    sys.argv = [sys.argv[0], *argv]
    global _jobs_started
    _jobs_started = False
    try:
        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_app)()
    except (HydraException, OmegaConfBaseException) as e:
        if user_wants_trace:
            raise
        fail(one_line(e, [a for a in argv if "=" in a]))
    except OSError as e:  # Hydra making the run or sweep dir, before any job ran
        if user_wants_trace or _jobs_started:
            raise
        fail(f"cannot create {e.filename or 'the run directory'} ({e.strerror or e}): "
             "hydra.run.dir / hydra.sweep.dir must be writable")
    except KeyboardInterrupt:
        if user_wants_trace:
            raise
        fail("interrupted: finished stages stay in the stage cache and rows already written stay"
             " in results.csv; run the same command again to resume (training continues from its"
             " last complete checkpoint)", code=130)
    finally:
        if not user_wants_trace:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        distributed.teardown()


_jobs_started = False  # whether Hydra got as far as running a job (see main's OSError case)


def _app(cfg: DictConfig) -> None:
    global _jobs_started
    _jobs_started = True
    load_plugins()  # again for jobs that start here (submitit unpickles the app)
    try:
        run_experiment(cfg)
    except (HydraException, OmegaConfBaseException) as e:  # a bug, not a composition error
        raise RuntimeError(f"{type(e).__name__}: {e}") from e
    if HydraConfig.get().mode.name == "RUN" and distributed.is_main():
        from harness.reporting.console import print_rows

        print_rows(cfg.results_dir, HydraConfig.get().runtime.output_dir, "this run")


def report_main(argv: list[str] | None = None) -> int:
    from harness.reporting.report import main as report

    return report(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()

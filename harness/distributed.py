"""Several processes on one run (torchrun, `accelerate launch`, SLURM tasks): who does what.

A run launched on N processes trains on all N and does everything else once. `on_main(fn)` runs
`fn` on rank 0 while the other ranks wait, then hands every rank its result (or stops every rank
with rank 0's error), so scoring, pruning, evaluation, the results row, W&B and publishing a cache
entry happen exactly once and the ranks stay in step. Training runs on every rank, each on the
device of its `LOCAL_RANK`.

The process group is created here, before Hydra starts (`setup()` in `harness.cli.main`), so that
every rank can name the same run directory: `${launch_time:...}` in conf/config.yaml is rank 0's
start time, broadcast to all ranks. SLURM jobs with several tasks per node get their torch
environment from `submitit.helpers.TorchDistributedEnvironment`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
T = TypeVar("T")
# Ranks other than 0 wait while rank 0 scores, prunes or evaluates: allow for a large model.
TIMEOUT = timedelta(minutes=int(os.environ.get("HARNESS_DIST_TIMEOUT_MIN", "720")))
_START = {"time": time.time()}


def world_size() -> int:
    """Number of processes in this run (WORLD_SIZE, set by torchrun / accelerate; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """True when this process is one of several with an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def use_cpu() -> bool:
    """No GPU, or `accelerate launch --cpu` asked for the CPU."""
    return not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in (
        "true", "1")


def device() -> torch.device:
    """This rank's device: cuda:LOCAL_RANK on a GPU machine (modulo the GPUs this process sees,
    for schedulers that show each task only its own), else the CPU."""
    if use_cpu():
        return torch.device("cpu")
    return torch.device("cuda", local_rank() % torch.cuda.device_count())


def export_slurm_tasks() -> None:
    """Inside a submitit job with several tasks, export RANK / WORLD_SIZE / MASTER_* for torch."""
    if "WORLD_SIZE" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return  # launched by torchrun / accelerate, or not a submitit job
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def setup() -> None:
    """Create the process group when this is one of several processes (no-op otherwise), and
    agree on rank 0's start time for `${launch_time:...}`."""
    export_slurm_tasks()
    if world_size() <= 1 or dist.is_initialized():
        return
    if not use_cpu():
        torch.cuda.set_device(device())
    backend = "gloo" if use_cpu() else "nccl"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    _START["time"] = on_main(time.time)
    log.info("rank %d of %d (%s, %s)", rank(), world_size(), backend, device())


def launch_time(pattern: str) -> str:
    """The OmegaConf resolver `${launch_time:%Y-%m-%d}`: rank 0's start time, the same on every
    rank, so all processes of one run write into one run directory."""
    return datetime.fromtimestamp(_START["time"]).strftime(pattern)


def barrier() -> None:
    if active():
        dist.barrier()


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only; every rank returns its result. An error on rank 0 is raised there
    and, as a RuntimeError naming it, on every other rank, so no rank waits forever."""
    if not active():
        return fn()
    box: list = [None]
    error = None
    if is_main():
        try:
            box[0] = ("ok", fn())
        except BaseException as e:  # noqa: BLE001 - re-raised below, after telling the others
            error = e
            box[0] = ("error", f"{type(e).__name__}: {e}")
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def accelerate_cpu_processes() -> int:
    """N when this process was started by `accelerate launch --cpu --num_processes N` (N > 1)
    without MPI: accelerate's CPU launcher then starts ONE process and ignores N (it expects
    `mpirun`), so the caller re-launches through torchrun. 0 in every other case."""
    if "WORLD_SIZE" in os.environ or os.environ.get("ACCELERATE_USE_CPU") is None:
        return 0
    try:
        import psutil
        from accelerate.commands.config import default_config_file, load_config_from_file
        from accelerate.commands.launch import launch_command_parser

        argv = psutil.Process().parent().cmdline()  # accelerate launch ... / accelerate-launch
        start = next(i for i, a in enumerate(argv) if a == "launch" or a.endswith("-launch"))
        args, _ = launch_command_parser().parse_known_args(argv[start + 1:])
        n = args.num_processes
        if n is None and (args.config_file or (os.path.isfile(default_config_file)
                                               and not args.cpu)):
            n = load_config_from_file(args.config_file).num_processes
    except Exception:  # noqa: BLE001 - not accelerate's launcher after all
        return 0
    return 0 if args.mpirun_hostfile or not n or n <= 1 else int(n)


def relaunch_with_torchrun(nproc: int, argv: list[str]) -> None:
    """Replace this process by `torchrun --standalone --nproc_per_node nproc -m harness ARGV`."""
    print(f"harness: accelerate's --cpu launcher starts one process; starting {nproc} through "
          "torchrun instead", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "harness", *argv]
    os.execv(sys.executable, cmd)

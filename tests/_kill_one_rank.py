"""`harness` with one rank dying mid-training: rank $KILL_RANK SIGKILLs itself at the end of
optimizer step $KILL_STEP of the first training phase (used by test_distributed.py)."""

import os
import signal

from transformers import TrainerCallback

from harness import cli, pipeline


class KillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        me = int(os.environ.get("RANK", "0")) == int(os.environ["KILL_RANK"])
        if me and state.global_step == int(os.environ["KILL_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)


_init = pipeline.Run.__init__


def _init_with_kill(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.callbacks.append(KillAt())


pipeline.Run.__init__ = _init_with_kill
cli.main()

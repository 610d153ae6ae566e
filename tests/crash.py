"""A crash for sweep tests, at the start of an epoch of one job, once: the whole process killed (SIGKILL: no handler,
no cleanup, as a node that dies) or Ctrl-C. Named by its `_target_` in a real `python train.py -m` command."""

import os
import signal
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from pytorch_lightning.callbacks import Callback


class KillOnce(Callback):
    def __init__(self, marker: str, job: int, epoch: int = 1, ctrl_c: bool = False):
        self.marker, self.job, self.epoch, self.ctrl_c = Path(marker), job, epoch, ctrl_c

    def on_train_epoch_start(self, trainer, pl_module):
        """At `epoch` of job `job`, after the previous epoch's checkpoints; the marker makes the rerun pass."""
        if trainer.current_epoch == self.epoch and HydraConfig.get().job.num == self.job and not self.marker.exists():
            self.marker.touch()
            if self.ctrl_c:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGKILL)

"""What makes a resumed run continue exactly: the random streams saved with each checkpoint, and SLURM's requeue
between two steps."""

import random
import signal

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment


class RandomState(pl.Callback):
    """Saves the random streams (augmentation, mixup, dropout) with each checkpoint as they stand at that point, and
    restores them when a fit resumes from it: a resumed run draws what the uninterrupted one would have drawn.
    Loading weights for a tool, a teacher or a transfer goes through no Trainer and leaves the streams alone."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        kind, keys, position, has_gauss, gauss = np.random.get_state()  # as tensors and numbers: weights_only loads
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)}
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get("rng")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        kind, keys, position, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        random.setstate(states["python"])
        if "cuda" in states and torch.cuda.device_count() == len(states["cuda"]):
            torch.cuda.set_rng_state_all(states["cuda"])


class SlurmRequeue(pl.Callback):
    """SLURM's warning before the time limit (`#SBATCH --signal=SIGUSR1@90`) handled at the end of the current
    step. Lightning saves its HPC checkpoint and requeues the job from inside the signal handler, where a lock held
    by the interrupted step (TensorBoard's event writer, a log handler) can deadlock the process; here the handler
    only sets a flag, and Lightning's same save-and-requeue runs between two steps. Outside SLURM it does nothing."""

    def __init__(self):
        self.warned = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning has installed its own handler by now (after on_fit_start): this one takes its place.
        if SLURMEnvironment.detect() and signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None):
            signal.signal(signal.SIGUSR1, self.warn)

    def warn(self, signum: int, frame) -> None:
        self.warned = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self.warned:
            self.warned = False
            trainer._signal_connector._slurm_sigusr_handler_fn(signal.SIGUSR1, None)

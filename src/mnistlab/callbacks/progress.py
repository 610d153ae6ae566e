"""What the console shows of a run, at the least cost per step: a progress bar counted in optimizer steps, the
seconds an epoch takes, and a profiler that records nothing when none is asked for."""

import contextlib
import math
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.profilers import PassThroughProfiler

from mnistlab.execution import optimizer_steps_per_epoch


class NoProfiler(PassThroughProfiler):
    """Lightning's default when no profiler is asked for, minus its cost: the default records nothing yet opens a
    generator context manager around each of the ~200 hook calls of a training step (about 0.3 ms a step on a
    CPU); this one hands out one shared no-op context."""

    _nothing = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.nullcontext:
        return self._nothing


class StepProgressBar(TQDMProgressBar):
    """Lightning's progress bar, counting optimizer steps: a Lightning step runs data.steps_per_execution of them
    (mnistlab.execution); it refreshes when a group crosses a multiple of refresh_rate steps, and at the end."""

    @property
    def total_train_batches(self) -> int | float:
        total = super().total_train_batches
        return optimizer_steps_per_epoch(self.trainer) if total == self.trainer.num_training_batches else total

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar is None or not self.is_enabled:
            return
        per_group = getattr(trainer.train_dataloader, "steps_per_execution", None) or 1
        done = min((batch_idx + 1) * per_group, bar.total or math.inf)
        if done // self.refresh_rate > (done - per_group) // self.refresh_rate or done == bar.total:
            bar.n = bar.last_print_n = done
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))


class EpochClock(pl.Callback):
    """The wall time of the training epochs, their validation included, kept in checkpoints: a resumed run's
    seconds per epoch are those of every process that ran its epochs, as an uninterrupted run's are."""

    def __init__(self):
        self.seconds, self.epochs, self.started = 0.0, 0, None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.started is not None:  # an epoch resumed mid-way started in another process: not counted
            self.seconds += time.perf_counter() - self.started
            self.epochs += 1
            self.started = None

    def state_dict(self) -> dict:
        return {"seconds": self.seconds, "epochs": self.epochs}

    def load_state_dict(self, state_dict: dict) -> None:
        self.seconds, self.epochs = state_dict["seconds"], state_dict["epochs"]


def seconds_per_epoch(trainer: pl.Trainer) -> float | None:
    """The mean seconds of a training epoch (its validation included) over the run, resumed parts too; None
    without an EpochClock or a whole epoch timed."""
    clock = next((c for c in trainer.callbacks if isinstance(c, EpochClock)), None)
    return round(clock.seconds / clock.epochs, 3) if clock is not None and clock.epochs else None

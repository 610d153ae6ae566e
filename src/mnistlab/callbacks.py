"""Training plumbing that any task gets by adding a callback (configs/callbacks/minimal.yaml lists them for every
run): a weight average whose decay grows with the run, the random streams saved with each checkpoint, stops for a
run whose loss is nan or that is not learning, and SLURM's requeue between two steps."""

import contextlib
import math
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import TQDMProgressBar, WeightAveraging
from pytorch_lightning.profilers import PassThroughProfiler

from mnistlab.errors import ConfigError, NonFiniteLossError, NotLearningError
from mnistlab.execution import optimizer_steps_per_epoch, step_losses


class NoProfiler(PassThroughProfiler):
    """Lightning's default when no profiler is asked for, minus its cost: the default records nothing yet opens a
    generator context manager around each of the ~200 hook calls of a training step (about 0.3 ms a step on a
    CPU); this one hands out one shared no-op context."""

    _nothing = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.nullcontext:
        return self._nothing


class EMA(WeightAveraging):
    """An exponential moving average of the weights, used for validation, test and the saved checkpoints, with the
    decay warmed up as TensorFlow's ExponentialMovingAverage(num_updates) does: after t updates,
    decay_t = min(decay, (1 + t) / (warmup + t)).

    A fixed decay of 0.999 keeps 0.999^t of the first steps' nearly random weights: a third of the average after
    1,100 steps, so a short run tests worse weights than it trained. With the warmup the average spans roughly
    the last t / (warmup - 1) steps until the decay reaches its cap (t = 9,000 for 0.999 and warmup 10), so it
    helps a 60-step run and an 80-epoch one alike. The decay follows the global step, so a resumed run goes on
    with the decay it left off at.
    """

    def __init__(self, decay: float = 0.999, warmup: float = 10.0, **kwargs):
        if not 0 <= decay < 1:
            raise ConfigError(f"callbacks.ema.decay={decay} must be in [0, 1)")
        if warmup < 1:
            raise ConfigError(f"callbacks.ema.warmup={warmup} must be >= 1 (1: no warmup)")
        super().__init__(multi_avg_fn=self._lerp, **kwargs)
        self.decay, self.warmup = decay, warmup
        self._decay_now = decay

    def decay_at(self, updates: int) -> float:
        """The decay of the update that follows `updates` earlier ones."""
        return min(self.decay, (1 + updates) / (self.warmup + updates))

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None:
            return False
        self._decay_now = self.decay_at(step_idx)  # set on the host here: no device read in the update
        return True

    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _updates: torch.Tensor) -> None:
        """One update of a group of tensors of one dtype; counters (BatchNorm's batches seen) are copied."""
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1 - self._decay_now)
        else:
            torch._foreach_copy_(averaged, current)


def load_tested_weights(trainer: pl.Trainer, module: pl.LightningModule, run_dir: Path) -> str:
    """Puts the weights a finished fit is tested with into `module` and returns their checkpoint ("" if none):
    under SWA the average (saved as swa.ckpt), otherwise the best checkpoint's (the last, without validation)."""
    if any(isinstance(c, pl.callbacks.StochasticWeightAveraging) for c in trainer.callbacks):
        # Lightning's SWA puts the average into the model when training ends (BatchNorm statistics recomputed),
        # and into no checkpoint: that average is what is tested, and saved as swa.ckpt.
        folder = Path(trainer.checkpoint_callback.dirpath) if trainer.checkpoint_callback else run_dir / "checkpoints"
        path = str(folder / "swa.ckpt")  # beside the run's other checkpoints, wherever dirpath puts them
        trainer.save_checkpoint(path)
        return path
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        # The checkpoint holds the weights that were validated: under EMA, the averaged ones. (Lightning's
        # ckpt_path="best" would restore the raw weights while a weight-averaging callback is attached.)
        module.load_state_dict(torch.load(best, map_location=module.device, weights_only=True)["state_dict"])
    return best


class StopIfNotLearning(pl.Callback):
    """Stop a run whose training loss has not moved below ln(num_classes), the loss of a network that answers
    every image with the same guess (dead ReLUs after too high a learning rate, say), with one line naming the cure.
    A dead network whose last bias still swings under a large learning rate sits above ln(num_classes): that counts.

    The check runs once, after the first epoch but no earlier than step `min_steps`, on the mean loss of the second
    half of the steps before it: the warmup's first steps, which barely move the weights, never count. A run too
    short to get there is not judged. The loss is summed on the device; the check reads it once.
    """

    def __init__(self, num_classes: int, min_steps: int = 50, tolerance: float = 0.02):
        self.chance_loss = math.log(num_classes)
        self.min_steps, self.tolerance = min_steps, tolerance
        self.check_step = 0  # set when fitting starts
        self.loss_sum: torch.Tensor | None = None
        self.counted = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        first_epoch = optimizer_steps_per_epoch(trainer)
        self.check_step = max(first_epoch, self.min_steps)
        self.loss_sum, self.counted = torch.zeros((), device=pl_module.device), 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        losses, first = step_losses(outputs, trainer)
        last = first + len(losses)  # optimizer steps taken, this group's included
        low, high = self.check_step // 2, self.check_step  # the window: steps low+1 .. high
        if self.loss_sum is None or first >= high or last <= low:
            return  # a resumed run past the check, or outside the window
        window = losses[max(low - first, 0) : high - first]
        self.loss_sum += window.float().sum()
        self.counted += len(window)
        if last >= high:
            mean = float(trainer.strategy.reduce(self.loss_sum / self.counted, reduce_op="mean"))
            if mean > (1 - self.tolerance) * self.chance_loss:
                raise NotLearningError(
                    f"not learning: the training loss is {mean:.3f} after {high} steps, the {self.chance_loss:.3f} "
                    f"(ln {round(math.exp(self.chance_loss))}) of a network that guesses one answer for every image; "
                    "lower optimizer.lr, lengthen the warmup (scheduler.warmup_epochs) or add BatchNorm "
                    "(model.batch_norm=true)")


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


class StopIfNonFinite(pl.Callback):
    """Stops a run whose training loss became nan or inf, with one line naming the step, before a checkpoint can
    save the ruined weights. The first bad step is kept on the device and read only every log_every_n_steps steps,
    before each validation and at each epoch's end (checkpoints are written after those): no host sync per step.
    It reads the losses of a whole group of steps at once (mnistlab.execution)."""

    def __init__(self):
        self.first_bad_step: torch.Tensor | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.first_bad_step = torch.tensor(-1, device=pl_module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        losses, first = step_losses(outputs, trainer)
        bad = ~torch.isfinite(losses)
        step = first + bad.int().argmax()  # the group's first bad step
        self.first_bad_step.copy_(torch.where(bad.any() & (self.first_bad_step < 0), step, self.first_bad_step))
        every = trainer.log_every_n_steps
        if every and (trainer.global_step // every > first // every):  # a multiple of every within the group
            self.stop_if_bad(trainer)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stop_if_bad(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stop_if_bad(trainer)

    def stop_if_bad(self, trainer: pl.Trainer) -> None:
        step = -1 if self.first_bad_step is None else int(self.first_bad_step)
        if step < 0:
            return
        folder = Path(trainer.checkpoint_callback.dirpath) if trainer.checkpoint_callback else None
        last = folder / "last.ckpt" if folder else None
        kept = f"the last good checkpoint is {last}" if last and last.is_file() else "no checkpoint was saved before it"
        raise NonFiniteLossError(f"the training loss became nan or inf at step {step} (epoch {trainer.current_epoch}"
                                 f"): training stopped; {kept}. Lower optimizer.lr or add warmup "
                                 "(scheduler.warmup_epochs)")


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

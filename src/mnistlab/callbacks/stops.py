"""Stops for a run that cannot end well: a loss that is nan or infinite, a loss that does not fall."""

import math
from pathlib import Path

import pytorch_lightning as pl
import torch

from mnistlab.errors import NonFiniteLossError, NotLearningError
from mnistlab.execution import optimizer_steps_per_epoch, step_losses


class StopIfNotLearning(pl.Callback):
    """Stop a run whose training loss has not moved below ln(num_classes), the loss of a network that answers
    every image with the same guess (dead ReLUs after too high a learning rate, say), with one line naming the cure.
    A dead network whose last bias still swings under a large learning rate sits above ln(num_classes): that counts.

    The check runs once, after the first epoch but no earlier than step `min_steps`, on the mean loss of the second
    half of the steps before it: the warmup's first steps, which barely move the weights, never count. A run too
    short to get there is not judged. The loss is summed on the device; the check reads it once.
    """

    def __init__(self, num_classes: int, *, min_steps: int, tolerance: float):
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

"""Training plumbing that any task gets by adding a callback: a weight average whose decay grows with the run, and
a stop for a run that is not learning."""

import math

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging

from mnistlab.errors import ConfigError, NotLearningError


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


class StopIfNotLearning(pl.Callback):
    """Stop a run whose training loss has not moved below ln(num_classes), the loss of a network that answers
    every image with the same guess (dead ReLUs after too high a learning rate, say), with one line naming the cure.
    A dead network whose last bias still swings under a large learning rate sits above ln(num_classes): that counts.

    The check runs once, after the first epoch but no earlier than step `min_steps`, on the mean loss of the second
    half of the steps before it: the warmup's first steps, which barely move the weights, never count. A run too
    short to get there is not judged. The loss is summed on the device; the check reads it once.
    """

    def __init__(self, num_classes: int, min_steps: int = 50, tolerance: float = 0.02):
        if tolerance <= 0:
            raise ConfigError(f"callbacks.not_learning.tolerance={tolerance} must be > 0")
        self.chance_loss = math.log(num_classes)
        self.min_steps, self.tolerance = min_steps, tolerance
        self.check_step = 0  # set when fitting starts
        self.loss_sum: torch.Tensor | None = None
        self.counted = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        first_epoch = trainer.num_training_batches // trainer.accumulate_grad_batches
        self.check_step = max(first_epoch, self.min_steps)
        self.loss_sum, self.counted = torch.zeros((), device=pl_module.device), 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step  # optimizer steps taken, this one included
        if self.loss_sum is None or step > self.check_step or step <= self.check_step // 2:
            return  # a resumed run past the check, or outside the window
        self.loss_sum += outputs["loss"].detach().float()
        self.counted += 1
        if step == self.check_step:
            mean = float(trainer.strategy.reduce(self.loss_sum / self.counted, reduce_op="mean"))
            if mean > (1 - self.tolerance) * self.chance_loss:
                raise NotLearningError(
                    f"not learning: the training loss is {mean:.3f} after {step} steps, the {self.chance_loss:.3f} "
                    f"(ln {round(math.exp(self.chance_loss))}) of a network that guesses one answer for every image; "
                    "lower optimizer.lr, lengthen the warmup (scheduler.warmup_epochs) or add BatchNorm "
                    "(model.batch_norm=true)")

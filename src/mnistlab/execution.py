"""Several optimizer steps per Lightning step (`data.steps_per_execution`, Keras' `steps_per_execution`).

Lightning's loop costs about a millisecond of Python per step on these CPUs, as much as a GPU step of the seed
network. The training loader therefore hands the task a `StepGroup` of K batches, and the task runs K optimizer
steps through `self.optimizers()` and `self.manual_backward` (manual optimization), so that Lightning's precision,
DDP and step counting stay in charge while its loop runs once per K steps.

The numbers do not depend on K: each batch of a group is made (augmented) only when the task reaches it, so the
random draws come in the same order; the callbacks whose meaning is per optimizer step (weight averages, the
learning-rate monitor) get their per-batch hooks for every step, those that watch the loss (the nan and
not-learning stops) read the group's losses at once, and the logged curves count optimizer steps.
"""

import math
from collections.abc import Callable, Iterator

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, WeightAveraging

from mnistlab.errors import ConfigError

# Lightning's cost per step of its own (its loop, the hooks of the default callbacks and logger), measured as
# mnistlab's overhead per optimizer step at one optimizer step per Lightning step (`mnistlab-bench --batch-sizes`,
# docs/performance.md), and a training step's compute. `auto` makes Lightning's share of a group at most
# TARGET_SHARE: half a percent, so that nearly all of the 5% a run may spend beyond a plain loop is left for what
# no K removes (each step's backward and optimizer hooks, the epoch's validation, views and checkpoints).
LIGHTNING_STEP_MS = 1.5
CPU_MS_PER_IMAGE = 0.08  # a bf16 step of the seed network on 2 cores of the machines here, per image
GPU_STEP_MS = 0.5        # a step of the seed network on one H100 at batches of 64-512, nearly flat
TARGET_SHARE = 0.005
MAX_STEPS_PER_EXECUTION = 64


def auto_steps_per_execution(batch_size: int, device: torch.device) -> int:
    """The smallest K at which Lightning's per-step cost is at most TARGET_SHARE of the K steps it runs."""
    step_ms = GPU_STEP_MS if device.type == "cuda" else CPU_MS_PER_IMAGE * batch_size
    return min(MAX_STEPS_PER_EXECUTION, max(1, math.ceil(LIGHTNING_STEP_MS / (TARGET_SHARE * step_ms))))


def group_blind_settings(trainer: pl.Trainer) -> list[str]:
    """Settings that Lightning evaluates at its own steps' ends, which would fall only where a group ends: a
    validation every N batches, a checkpoint every N steps (a checkpoint is saved between groups, never inside)."""
    found = []
    interval = trainer.val_check_interval
    if isinstance(interval, int) and not isinstance(interval, bool):
        found.append(f"trainer.val_check_interval={interval}")
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback._every_n_train_steps > 0:
            found.append(f"every_n_train_steps={callback._every_n_train_steps} of a checkpoint callback")
    return found


def resolve_steps_per_execution(setting: int | str, batch_size: int, trainer: pl.Trainer | None) -> int:
    """K for a training loader: an explicit K as given, `auto` auto_steps_per_execution on the trainer's device;
    1 without a Trainer, and for `auto` beside a setting that counts Lightning's steps (group_blind_settings)."""
    if trainer is None:
        return 1 if setting == "auto" else setting
    blind = group_blind_settings(trainer)
    if setting == "auto":
        return 1 if blind else auto_steps_per_execution(batch_size, trainer.strategy.root_device)
    if setting > 1 and blind:
        raise ConfigError(f"data.steps_per_execution={setting} does not go with {blind[0]}: Lightning counts that in "
                          f"its own steps, each a group of {setting} optimizer steps; validate or save every N epochs "
                          "(check_val_every_n_epoch, every_n_epochs) or at a fraction of the epoch "
                          "(val_check_interval=0.5), or give data.steps_per_execution=1")
    return setting


class StepGroup:
    """Up to K training batches handed to the task at once. Each batch is made when the task reaches it (cut,
    augmented, composed), so whatever K, the random draws of making and of training a batch alternate as at K=1."""

    def __init__(self, batches: Iterator, count: int):
        self._batches, self.count, self._first, self.images = batches, count, None, 0

    def __len__(self) -> int:
        return self.count

    def first(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The group's first batch (made now if not yet): what TensorBoard's first-batch view shows."""
        if self._first is None:
            self._first = next(self._batches)
            self.images += len(self._first[1])
        return self._first

    def __iter__(self):
        yield self.first()
        for _ in range(self.count - 1):
            batch = next(self._batches)
            self.images += len(batch[1])
            yield batch


def first_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch, or the first of a group of them."""
    return batch.first() if isinstance(batch, StepGroup) else batch


def grouped(batches: Callable[[int], Iterator], count: int, per_group: int, done: Callable[[], int]):
    """`count` batches as groups of `per_group`, starting after the `done()` groups a resumed epoch already ran
    (read when iteration starts: Lightning restores its progress before): `batches(start)` yields batches from
    index `start` on."""
    start = done() * per_group
    made = batches(start)
    for first in range(start, count, per_group):
        yield StepGroup(made, min(per_group, count - first))


def optimizer_steps_per_epoch(trainer: pl.Trainer) -> int:
    """Optimizer steps in one training epoch: the loader's batches, less what a fractional
    trainer.limit_train_batches cuts off its groups."""
    loader = trainer.train_dataloader
    per_group = getattr(loader, "steps_per_execution", None)
    if per_group is None:
        return trainer.num_training_batches // trainer.accumulate_grad_batches
    return min(loader.num_batches(), trainer.num_training_batches * per_group)


def step_losses(outputs: dict, trainer: pl.Trainer) -> tuple[torch.Tensor, int]:
    """(the losses of the optimizer steps a training step just ran, the index of the first of them): the task's
    `loss` output holds one per step of its group, and callbacks that watch the loss read them at once."""
    losses = outputs["loss"].reshape(-1)
    return losses, trainer.global_step - len(losses)


def is_per_step(callback: pl.Callback) -> bool:
    """Callbacks whose per-batch hooks mean per optimizer step: they get them for every step of a group."""
    return isinstance(callback, WeightAveraging | LearningRateMonitor) or getattr(callback, "per_optimizer_step", False)


class StepHooks:
    """The per-batch hooks of the per-step callbacks between the steps of a group. Lightning calls every
    callback's `on_train_batch_start` before a group and `on_train_batch_end` after it, and writes the logged step
    metrics after it; this does the same for the per-step callbacks, and writes the metrics of a logging step,
    between the steps of a group, with the logger's step counter (`_batches_that_stepped`, which Lightning
    advances once a group) set as it would stand at K=1: the curves count optimizer steps."""

    def __init__(self, trainer: pl.Trainer, module: pl.LightningModule):
        self.trainer, self.module = trainer, module
        self.callbacks = [callback for callback in trainer.callbacks if is_per_step(callback)]

    def _set_logged_step(self, step: int) -> None:
        self.trainer.fit_loop.epoch_loop._batches_that_stepped = step

    def end(self, outputs: dict, batch, batch_idx: int) -> None:
        """After a step of a group that is not its last."""
        self._set_logged_step(self.trainer.global_step - 1)
        for callback in self.callbacks:
            callback.on_train_batch_end(self.trainer, self.module, outputs, batch, batch_idx)
        self.trainer._logger_connector.update_train_step_metrics()  # writes only on a logging step

    def start(self, batch, batch_idx: int) -> None:
        """Before a step of a group that is not its first."""
        self._set_logged_step(self.trainer.global_step)
        for callback in self.callbacks:
            callback.on_train_batch_start(self.trainer, self.module, batch, batch_idx)

    def after_group(self) -> None:
        """Lightning adds one to the logger's step after the group: it then counts optimizer steps."""
        self._set_logged_step(self.trainer.global_step - 1)

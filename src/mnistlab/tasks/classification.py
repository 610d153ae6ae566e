"""The LightningModule: the network built from its config, the loss with its tricks, metrics, optimizer."""

from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from mnistlab import __version__, tricks
from mnistlab.checkpoints import (
    CHECKPOINT_FORMAT,
    MNISTLAB_KEY,
    existing_checkpoint,
    is_segmentation,
    load_teacher,
    read_checkpoint,
    saved_network,
    unreadable_reason,
)
from mnistlab.config import missing_settings, stated_settings
from mnistlab.errors import ConfigError
from mnistlab.execution import StepGroup, StepHooks, optimizer_steps_per_epoch
from mnistlab.models.registry import build_network
from mnistlab.validation import check_values


class Classifier(pl.LightningModule):
    """Trains the network `model` (a Hydra config dict with `_target_`) with `optimizer` (likewise, minus
    the params) and an optional per-batch `scheduler` (a partial taking the optimizer and the run's length).

    The remaining arguments are the bag-of-tricks settings, every one given: configs/train.yaml `tricks` states
    them (all off) and is their only default. Their ranges are the rules table's (mnistlab.validation.RULES),
    checked where the settings come in: a run's config by check_config, a checkpoint's by load_classifier.
    Everything is saved in the checkpoint, so `load_classifier(path)` rebuilds the exact network without the run's
    config files (and without the run's teacher or transfer source).
    """

    TRAIN_ACCURACY = "train/acc"

    def __init__(self, model: dict, optimizer: dict, scheduler: dict | None = None, *, label_smoothing: float,
                 mixup_alpha: float, cutmix_alpha: float, mix_prob: float, mix_off_last_epochs: int,
                 no_bias_decay: bool, linear_lr_scaling: bool, distill_teacher: str | list[str] | None,
                 distill_weight: float, distill_temperature: float, init_from: str | None, freeze_conv: bool,
                 channels_last: bool | str):
        super().__init__()
        if freeze_conv and not init_from:
            raise ConfigError("tricks.freeze_conv=true freezes transferred weights: it needs tricks.init_from=CKPT")
        self.save_hyperparameters(logger=False)
        # Manual optimization: training_step runs one or several optimizer steps (mnistlab.execution).
        self.automatic_optimization = False
        self.gradient_clip_val, self.gradient_clip_algorithm = None, None  # set by mnistlab.train.build_run
        self.step_hooks: StepHooks | None = None  # set when training starts
        self.net = build_network(model)  # registered networks only: a loaded checkpoint's config is data
        # One input batch: Lightning's model summary shows each layer's in/out sizes with it.
        self.example_input_array = torch.zeros(2, *self.net.input_shape)
        if init_from:
            tricks.transfer_weights(self.net, init_from, freeze_conv)
        num_classes = self.net.num_classes
        self.mixer = tricks.batch_mixer(mixup_alpha, cutmix_alpha, num_classes)
        # Not a submodule: the teacher is never trained, and never saved in the student's checkpoint.
        self.__dict__["teacher"] = load_teacher(distill_teacher, num_classes) if distill_teacher else None
        self.__dict__["compiled_net"] = None  # see compile_network
        if channels_last is True:
            self.use_channels_last()
        # validate_args=False: the argument checks sync with the host on every update.
        metric = dict(num_classes=num_classes, average="micro", validate_args=False)
        self.train_totals: torch.Tensor | None = None  # see training_step
        self.val_acc = MulticlassAccuracy(**metric)
        self.test_acc = MulticlassAccuracy(**metric)
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints, so a resumed run keeps its best so far

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net if self.compiled_net is None else self.compiled_net)(x)

    def compile_network(self, mode: str | None = None) -> None:
        """torch.compile the forward pass (config `compile`). Kept beside `net`, not registered as a submodule:
        `net` stays the plain network, so the state_dict keys, every checkpoint and the graph trace are unchanged.
        Compiling happens at the first forward pass (Lightning's model summary) and again for each new batch
        shape or mode (training, validation), and counts in the run's time."""
        self.__dict__["compiled_net"] = torch.compile(self.net, mode=mode)

    def on_fit_start(self) -> None:
        if self.teacher is not None:  # not a submodule: Lightning moves and converts (bf16-true, ...) only the net
            self.teacher.to(device=self.device, dtype=self.dtype)

    def setup(self, stage: str) -> None:
        if self.hparams.channels_last == "auto" and str(self.trainer.precision).startswith("bf16"):
            self.use_channels_last()

    def use_channels_last(self) -> None:
        """NHWC is what makes bf16 convolutions fast; the teacher, which runs every step too, follows the net."""
        self.net.to(memory_format=torch.channels_last)
        if self.teacher is not None:
            self.teacher.to(memory_format=torch.channels_last)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is not None:  # mnistlab-eval tests at the precision the run trained at
            checkpoint["precision"] = self._trainer.precision
        checkpoint[MNISTLAB_KEY] = {"version": __version__, "format": CHECKPOINT_FORMAT}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.trained_precision = checkpoint.get("precision", "32-true")  # for mnistlab-eval

    def mixing_now(self) -> bool:
        """Mix this batch? With probability mix_prob, and never in the last mix_off_last_epochs epochs."""
        last_epochs = self.current_epoch >= self.trainer.max_epochs - self.hparams.mix_off_last_epochs
        return not last_epochs and float(torch.rand(())) < self.hparams.mix_prob

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, logits, the label each image is scored against) for one training batch, tricks applied."""
        targets = y
        if self.mixer is not None and self.mixing_now():
            x, targets = self.mixer(x, y)  # soft targets: convex combinations of two one-hot labels
        logits = self(x)
        # Label smoothing is applied here once, to hard and mixed targets alike.
        loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            loss = tricks.distillation_loss(logits, teacher_logits, loss, self.hparams.distill_weight,
                                            self.hparams.distill_temperature)
        # With mixed targets, accuracy is measured against the dominant label.
        return loss, logits, targets.argmax(1) if targets.ndim == 2 else targets

    def answer_counts(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(correct answers, answers) of one training batch, as tensors on the device."""
        return (logits.argmax(1) == labels).sum(), torch.full((), len(labels), device=labels.device)

    def training_step(self, batches, batch_idx: int) -> dict:
        """One optimizer step per batch of `batches`: a (images, labels) batch, or a group of them
        (data.steps_per_execution, see mnistlab.execution), each with the step's schedule, clipping and per-step
        callbacks as Lightning's automatic optimization would run them."""
        group = batches if isinstance(batches, StepGroup) else [batches]
        optimizer, hooks, last, losses = self.optimizers(), self.step_hooks, len(group) - 1, []
        for i, (x, y) in enumerate(group):
            if i:
                hooks.start(batches, batch_idx)
            loss = self.optimizer_step_on(optimizer, x, y)
            losses.append(loss)
            # Each `self.log` call costs Lightning about half a millisecond, so the step loss is logged only where
            # the logger writes (every trainer.log_every_n_steps) and at each epoch's first step (progress bar).
            every = self.trainer.log_every_n_steps
            if (batch_idx == 0 and i == 0) or (every and self.trainer.global_step % every == 0):
                self.log("train/loss_step", loss, prog_bar=True, batch_size=len(y))
            if i == last or 0 <= self.trainer.max_steps <= self.trainer.global_step:
                break
            hooks.end({"loss": loss}, batches, batch_idx)
        hooks.after_group()
        return {"loss": torch.stack(losses)}  # one per optimizer step (mnistlab.execution.step_losses)

    def optimizer_step_on(self, optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step: loss, backward, optimizer (clipping in on_before_optimizer_step), the per-step schedules."""
        loss, logits, labels = self.training_loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == "step" and self.trainer.global_step % config.frequency == 0:
                config.scheduler.step()
        # The epoch's figures are running sums on the device, one add a step: two torchmetrics updates cost ten
        # times that in Python, and a step of this network is a few milliseconds.
        with torch.no_grad():
            correct, answers = self.answer_counts(logits, labels)
            step = torch.stack((loss.detach().float() * answers, correct.float(), answers.float()))
            # Started here, not at the epoch's start: a run resumed mid-epoch starts there without that hook.
            self.train_totals = step if self.train_totals is None else self.train_totals + step
        return loss.detach()

    def on_before_optimizer_step(self, optimizer) -> None:
        """trainer.gradient_clip_val, applied where automatic optimization applies it: after the backward pass
        (and AMP's unscaling), after the gradient histograms, before the step."""
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, self.gradient_clip_val, self.gradient_clip_algorithm)

    def on_train_start(self) -> None:
        self.step_hooks = StepHooks(self.trainer, self)

    def on_train_epoch_end(self) -> None:
        for config in self.trainer.lr_scheduler_configs:  # SWA's annealing, say: manual optimization steps them
            if config.interval == "epoch" and (self.current_epoch + 1) % config.frequency == 0:
                config.scheduler.step()
        if self.train_totals is None:
            return  # no training step this epoch
        loss_sum, correct, answers = self.train_totals
        self.train_totals = None
        # sync_dist: under DDP, the mean of every rank's figure (their shards are equal).
        self.log("train/loss_epoch", loss_sum / answers, sync_dist=True)
        self.log(self.TRAIN_ACCURACY, correct / answers, sync_dist=True)

    def _evaluate(self, batch, stage: str, accuracy: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        accuracy.update(logits, y)
        # sync_dist: under DDP the epoch's loss is averaged over every rank's shard (once, at the epoch's end).
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, prog_bar=True, batch_size=len(y),
                 sync_dist=True)
        self.log(f"{stage}/acc", accuracy, on_epoch=True, prog_bar=True)
        return logits

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val", self.val_acc)  # the logits, for inspection.ValidationAnalysis

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return  # the sanity check's two batches are not a validation result
        self.val_acc_best.update(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def configure_optimizers(self):
        settings = dict(self.hparams.optimizer)
        if self.hparams.linear_lr_scaling:
            batch = self.trainer.datamodule.batch_size * self.trainer.world_size
            settings["lr"] = tricks.linear_scaled_lr(settings["lr"], batch)
        groups = tricks.parameter_groups(self.net, settings.pop("weight_decay", 0.0), self.hparams.no_bias_decay)
        optimizer = instantiate(settings, _partial_=True)(groups)
        if not self.hparams.scheduler:
            return optimizer
        self.trainer.fit_loop.setup_data()  # the training loader, whose batches are the optimizer steps
        steps_per_epoch = optimizer_steps_per_epoch(self.trainer)
        epochs = self.trainer.max_epochs
        total_steps = steps_per_epoch * epochs if epochs and epochs > 0 else self.trainer.max_steps
        if self.trainer.max_steps >= 0:
            total_steps = min(total_steps, self.trainer.max_steps)
        scheduler = instantiate(self.hparams.scheduler)(optimizer, total_steps, steps_per_epoch)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_classifier(checkpoint: str | Path, what: str) -> Classifier:
    """A trained Classifier (on the CPU) from a mnistlab checkpoint, a Segmenter (its subclass) from a segmentation
    run's; `what` names the setting that pointed at it. Missing, corrupt and mismatched files end in one
    ConfigError line. Its hparams read no teacher and no transfer source: the saved weights already hold what
    they gave."""
    path = existing_checkpoint(checkpoint, what)
    saved = read_checkpoint(path, what)  # safe, and mnistlab's: else one line naming what is wrong
    kind, choices = Classifier, ()
    if is_segmentation(saved):
        from mnistlab.tasks.segmentation import Segmenter  # it builds on this module

        kind, choices = Segmenter, ("task=segmentation",)
    given = saved.get("hyper_parameters") or {}
    try:  # the rules a run's tricks pass in check_config, for settings that come from a file
        check_values(given, prefix="tricks")
    except ConfigError as err:
        raise ConfigError(f"{what}={checkpoint}: its {err}") from None
    saved_network(saved, f"{what}={checkpoint}")  # weights that do not fit their model config: one line
    # A checkpoint saved before a trick or a task setting existed lacks it: configs/ states it.
    missing = {**missing_settings(stated_settings("tricks", choices), given),
               **missing_settings(stated_settings("task", choices), given)}
    missing.pop("metrics", None)  # the task config's metric names, not an argument
    try:
        # The saved weights are the whole network: the run's teacher and transfer source are neither reloaded nor
        # needed (they may be gone).
        return kind.load_from_checkpoint(path, map_location="cpu", **{
            **missing, "distill_teacher": None, "init_from": None, "freeze_conv": False})
    except Exception as err:
        raise ConfigError(f"{what}={checkpoint}: {unreadable_reason(err)}") from None

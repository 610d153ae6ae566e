"""Classification, and the task contract every mnistlab task follows (`Classifier` is the base of them all): the
network built from its config, the loss with its tricks, metrics, optimizer, and what the tools ask a task.

The contract, so that no code outside tasks/ branches on a task's kind:
- `DATA_MODULE`: the data module it trains on (its config group sets `data._target_` to it or a subclass);
- `recognises(saved)`: whether a checkpoint that names no task is one of this task's (checkpoints name their task
  and data module: `on_save_checkpoint`);
- `loss(logits, labels)` and `answer_counts(logits, labels)`: its plain criterion and its right answers, what a
  plain training loop (mnistlab-bench's floor) needs;
- `check_data(data, what)`, `evaluation(trainer, data, results)`, `evaluation_rows(metrics)` and `ENSEMBLES`:
  what mnistlab-eval checks, reports and prints;
- `predict_images(data, paths, settings)`: mnistlab-predict's answer for image files, each row with its `answer`.
"""

import operator

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from mnistlab import __version__, tricks
from mnistlab.checkpoints import CHECKPOINT_FORMAT, MNISTLAB_KEY, load_teacher
from mnistlab.data.digits import MNISTDataModule
from mnistlab.errors import ConfigError
from mnistlab.execution import StepGroup, StepHooks, optimizer_steps_per_epoch
from mnistlab.image_files import FIT_CHOICES, INK_SHARE, prepare
from mnistlab.models.registry import build_network, class_name


class Classifier(pl.LightningModule):
    """Trains the network `model` (a Hydra config dict with `_target_`) with `optimizer` (likewise, minus
    the params) and an optional per-batch `scheduler` (a partial taking the optimizer and the run's length).

    The remaining arguments are the bag-of-tricks settings, every one given: configs/train.yaml `tricks` states
    them (all off) and is their only default. Their ranges are the rules table's (mnistlab.validation.RULES),
    checked where the settings come in: a run's config by check_config, a checkpoint's by
    mnistlab.tasks.registry.load_task. Everything is saved in the checkpoint, so `load_task(path)` rebuilds the exact
    network without the run's config files (and without the run's teacher or transfer source).
    """

    TRAIN_ACCURACY = "train/acc"
    DATA_MODULE = MNISTDataModule
    ENSEMBLES = True  # mnistlab-eval scores several checkpoints as the mean of their logits

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
        self.gradient_clip_val, self.gradient_clip_algorithm = None, None  # set by mnistlab.build.build_run
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
        self.val_best = MaxMetric()  # the best validation value so far: accuracy here, a subclass's own metric
        self.val_best.persistent(True)  # saved in checkpoints, so a resumed run keeps its best so far

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
        data = self._trainer.datamodule if self._trainer is not None else None
        checkpoint[MNISTLAB_KEY] = {"version": __version__, "format": CHECKPOINT_FORMAT, "task": class_name(type(self)),
                                    **({"data": class_name(type(data))} if data is not None else {})}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.trained_precision = checkpoint.get("precision", "32-true")  # for mnistlab-eval
        state = checkpoint["state_dict"]
        for key in [key for key in state if key.startswith("val_acc_best.")]:  # its name in older checkpoints
            state["val_best." + key.removeprefix("val_acc_best.")] = state.pop(key)

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

    def answer_counts(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | int]:
        """(correct answers, answers) of one training batch: a tensor on the device, and a count (a tensor there
        too where counting needs the data, else an int)."""
        return (logits.argmax(1) == labels).sum(), len(labels)

    def training_step(self, batches, batch_idx: int) -> dict:
        """One optimizer step per batch of `batches`: a (images, labels) batch, or a group of them
        (data.steps_per_execution, see mnistlab.execution), each with the step's schedule, clipping and per-step
        callbacks as Lightning's automatic optimization would run them."""
        group = batches if isinstance(batches, StepGroup) else [batches]
        optimizer, hooks, last, trainer = self.optimizers(), self.step_hooks, len(group) - 1, self.trainer
        every, max_steps = trainer.log_every_n_steps, trainer.max_steps
        losses, corrects, answers = [], [], []
        for i, (x, y) in enumerate(group):
            if i:
                hooks.start(batches, batch_idx)
            loss, correct, count = self.optimizer_step_on(optimizer, x, y)
            losses.append(loss)
            corrects.append(correct)
            answers.append(count)
            step = trainer.global_step
            # Each `self.log` call costs Lightning about half a millisecond, so the step loss is logged only where
            # the logger writes (every trainer.log_every_n_steps) and at each epoch's first step (progress bar).
            if (batch_idx == 0 and i == 0) or (every and step % every == 0):
                self.log("train/loss_step", loss, prog_bar=True, batch_size=len(y))
            if i == last or 0 <= max_steps <= step:
                break
            hooks.end({"loss": loss}, batches, batch_idx)
        hooks.after_group()
        losses = torch.stack(losses)
        self.add_to_training_totals(losses, corrects, answers)
        return {"loss": losses}  # one per optimizer step (mnistlab.execution.step_losses)

    def optimizer_step_on(self, optimizer, x: torch.Tensor,
                          y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | int]:
        """One step: loss, backward, optimizer (clipping in on_before_optimizer_step), the per-step schedules.
        Returns the loss and the batch's answer_counts."""
        loss, logits, labels = self.training_loss(x, y)
        # Lightning's autocast spans the whole training_step. Its automatic optimization runs the backward and the
        # optimizer step outside it (torch advises against backward passes under autocast), and so does this.
        with torch.autocast(self.device.type, enabled=False):
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == "step" and self.trainer.global_step % config.frequency == 0:
                config.scheduler.step()
        with torch.no_grad():
            return loss.detach(), *self.answer_counts(logits, labels)

    def add_to_training_totals(self, losses: torch.Tensor, corrects: list[torch.Tensor],
                               answers: list[torch.Tensor | int]) -> None:
        """Adds a group's steps to the epoch's running figures, which stay on the device: (loss x answers,
        correct, answers) summed once a group, as a few tensor operations, rather than once a step."""
        with torch.no_grad():
            losses = losses.float()
            if isinstance(answers[0], torch.Tensor):
                counts = torch.stack(answers).float()
                loss_sum, answered = (losses * counts).sum(), counts.sum()
            else:  # counted on the host: made on the device by a fill, not copied there (a copy waits for it)
                equal = len(set(answers)) == 1
                loss_sum = losses.sum() * answers[0] if equal else sum(map(operator.mul, losses, answers))
                answered = torch.full((), float(sum(answers)), device=losses.device)
            group = torch.stack((loss_sum, torch.stack(corrects).sum().float(), answered))
            # Started here, not at the epoch's start: a run resumed mid-epoch starts there without that hook.
            self.train_totals = group if self.train_totals is None else self.train_totals + group

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
        self.val_best.update(self.val_acc.compute())
        self.log("val/acc_best", self.val_best.compute(), prog_bar=True)

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


    # What the tools ask a task (see the module's docstring).

    @classmethod
    def recognises(cls, saved: dict) -> bool:
        """Every checkpoint that names no task and that no more specific task recognises is a classifier's."""
        return True

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The plain criterion, without the tricks of training_loss."""
        return F.cross_entropy(logits, labels)

    def check_data(self, data: MNISTDataModule, what: str) -> None:
        """The data must have the image shape and class count the network was built for."""
        channels, size, _ = self.net.input_shape
        wants = (channels, size, self.net.num_classes)
        has = (data.hparams.in_channels, data.image_size, data.num_classes)
        if wants != has:
            raise ConfigError(f"{what}: the network takes {wants[0]}x{wants[1]}x{wants[1]} images and predicts "
                              f"{wants[2]} classes, but the data ({data.name}) has {has[0]}x{has[1]}x{has[1]} images "
                              f"and {has[2]} classes")

    def evaluation(self, trainer: pl.Trainer, data: MNISTDataModule, results: dict) -> dict:
        """mnistlab-eval's figures from Lightning's test results: accuracy, loss, and the accuracy per class."""
        per_class = MulticlassAccuracy(num_classes=data.num_classes, average=None).to(self.device)
        self.eval()
        with torch.no_grad(), trainer.strategy.precision_plugin.forward_context():
            for x, y in data.test_dataloader():
                per_class.update(self(x), y)
        return {"test/acc": results["test/acc"], "test/loss": results["test/loss"],
                "images": len(data.splits["test"][1]),
                "per_class_acc": dict(zip(data.class_names, per_class.compute().tolist(), strict=True))}

    @staticmethod
    def evaluation_rows(metrics: dict) -> list[tuple[str, str]]:
        """(label, value) rows of mnistlab-eval's report of `evaluation`'s figures."""
        return [("test set", f"{metrics['images']} images of {metrics['dataset']} in {metrics['root']}, "
                             f"{metrics['precision']}"),
                ("test/acc", f"{metrics['test/acc']:.4f}"),
                ("test/loss", f"{metrics['test/loss']:.4f}"),
                ("per class", "  ".join(f"{name} {acc:.3f}" for name, acc in metrics["per_class_acc"].items()))]

    def predict_images(self, data: MNISTDataModule, paths: list[str], settings) -> list[dict]:
        """For each image file: its top `settings.top` classes with probabilities, each image framed as the dataset
        frames its images (`settings.fit`)."""
        fit, top = settings.fit, settings.top
        if fit not in FIT_CHOICES:
            raise ConfigError(f"fit={fit}: choose one of {', '.join(FIT_CHOICES)}")
        if not (isinstance(top, int) and 1 <= top <= data.num_classes):
            raise ConfigError(f"top={top}: must be between 1 and the {data.num_classes} classes")
        invert = str(settings.invert).lower()
        prepared = [prepare(path, invert, fit, data.image_size, INK_SHARE[data.name]) for path in paths]
        batch = torch.stack([image for image, _ in prepared])
        with torch.no_grad():
            probabilities = self(data.normalize(batch * 255)).softmax(1)  # normalize takes 0..255 pixels
        best = probabilities.topk(top, dim=1)
        rows = []
        for path, (_, inverted), values, indices in zip(paths, prepared, *best, strict=True):
            guesses = [(data.class_names[i], float(p)) for p, i in zip(values.tolist(), indices.tolist(), strict=True)]
            rows.append({"image": path, "inverted": inverted, "top": guesses,
                         "answer": "   ".join(f"{name} {p:6.1%}" for name, p in guesses)})
        return rows

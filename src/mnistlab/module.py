"""The LightningModule: the network built from its config, the loss with its tricks, metrics, optimizer."""

import inspect
import pickle
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from mnistlab import tricks
from mnistlab.cli import parse_value
from mnistlab.data import MNISTDataModule
from mnistlab.errors import ConfigError


class Classifier(pl.LightningModule):
    """Trains the network `model` (a Hydra config dict with `_target_`) with `optimizer` (likewise, minus
    the params) and an optional per-batch `scheduler` (a partial taking the optimizer and the run's length).

    The remaining arguments are the bag-of-tricks switches, all off by default (configs/train.yaml `tricks`).
    Everything is saved in the checkpoint, so `Classifier.load_from_checkpoint(path)` rebuilds the exact
    network without the run's config files.
    """

    def __init__(self, model: dict, optimizer: dict, scheduler: dict | None = None, label_smoothing: float = 0.0,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, mix_prob: float = 1.0,
                 mix_off_last_epochs: int = 0, no_bias_decay: bool = False, linear_lr_scaling: bool = False,
                 distill_teacher: str | None = None, distill_weight: float = 0.5, distill_temperature: float = 4.0,
                 init_from: str | None = None, freeze_conv: bool = False, channels_last: bool = False):
        super().__init__()
        check_tricks(label_smoothing, mixup_alpha, cutmix_alpha, mix_prob, mix_off_last_epochs, distill_weight,
                     distill_temperature, freeze_conv and not init_from)
        self.save_hyperparameters(logger=False)
        self.net = instantiate(model)
        # One input batch: Lightning's model summary shows each layer's in/out sizes with it.
        self.example_input_array = torch.zeros(2, *self.net.input_shape)
        if init_from:
            tricks.transfer_weights(self.net, init_from, freeze_conv)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        num_classes = model["num_classes"]
        self.mixer = tricks.batch_mixer(mixup_alpha, cutmix_alpha, num_classes)
        # Not a submodule: the teacher is never trained, and never saved in the student's checkpoint.
        self.__dict__["teacher"] = load_teacher(distill_teacher, num_classes) if distill_teacher else None
        # validate_args=False: the argument checks sync with the host on every update.
        metric = dict(num_classes=num_classes, average="micro", validate_args=False)
        self.train_acc = MulticlassAccuracy(**metric)
        self.val_acc = MulticlassAccuracy(**metric)
        self.test_acc = MulticlassAccuracy(**metric)
        self.val_acc_best = MaxMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["precision"] = self.trainer.precision  # mnistlab-eval tests at the precision the run trained at

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity-check validation

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

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, logits, labels = self.training_loss(*batch)
        self.train_acc.update(logits, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch, stage: str, accuracy: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        accuracy.update(logits, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}/acc", accuracy, on_epoch=True, prog_bar=True)
        return logits

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val", self.val_acc)  # the logits, for inspection.ValidationAnalysis

    def on_validation_epoch_end(self) -> None:
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
        total_steps = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = total_steps / max(1, self.trainer.max_epochs)
        scheduler = instantiate(self.hparams.scheduler)(optimizer, total_steps, steps_per_epoch)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_tricks(label_smoothing, mixup_alpha, cutmix_alpha, mix_prob, mix_off_last_epochs, distill_weight,
                 distill_temperature, freezing_nothing) -> None:
    """Reject out-of-range trick settings before anything is built, one line each."""
    checks = [
        (0 <= label_smoothing < 1, f"tricks.label_smoothing={label_smoothing} must be in [0, 1)"),
        (mixup_alpha >= 0, f"tricks.mixup_alpha={mixup_alpha} must be >= 0 (0 turns mixup off)"),
        (cutmix_alpha >= 0, f"tricks.cutmix_alpha={cutmix_alpha} must be >= 0 (0 turns cutmix off)"),
        (0 <= mix_prob <= 1, f"tricks.mix_prob={mix_prob} must be in [0, 1]"),
        (mix_off_last_epochs >= 0, f"tricks.mix_off_last_epochs={mix_off_last_epochs} must be >= 0"),
        (0 <= distill_weight <= 1, f"tricks.distill_weight={distill_weight} must be in [0, 1]"),
        (distill_temperature > 0, f"tricks.distill_temperature={distill_temperature} must be > 0"),
        (not freezing_nothing, "tricks.freeze_conv=true freezes transferred weights: it needs tricks.init_from=CKPT"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def load_classifier(checkpoint: str | Path, what: str) -> Classifier:
    """A trained Classifier (on the CPU) from a mnistlab checkpoint; `what` names the setting that pointed at it.
    Missing, corrupt and mismatched files end in one ConfigError line."""
    path = tricks.existing_checkpoint(checkpoint, what)
    try:
        return Classifier.load_from_checkpoint(path, map_location="cpu")
    except Exception as err:
        raise ConfigError(f"{what}={checkpoint}: {unreadable_reason(err)}") from None


def unreadable_reason(err: Exception) -> str:
    """Why a checkpoint did not load, in one line."""
    text = str(err)
    if "loading state_dict" in text:  # the saved model config rebuilds a network its weights do not fit
        details = "; ".join(line.strip() for line in text.splitlines()[1:] if line.strip())
        details = details if len(details) <= 240 else details[:240] + " ..."
        return f"its weights do not fit the model config saved with them ({details})"
    if isinstance(err, KeyError):
        return f"not a mnistlab checkpoint (no {err} entry)"
    if isinstance(err, OSError | EOFError | pickle.UnpicklingError) or "zip archive" in text:
        return f"truncated, corrupt or not a PyTorch checkpoint ({type(err).__name__})"
    return f"not a mnistlab checkpoint ({text.splitlines()[0] if text else type(err).__name__})"


def load_datamodule(checkpoint: str | Path, overrides: dict[str, str]) -> MNISTDataModule:
    """The data a checkpoint was trained on (its data module's settings are saved in it), with `data.KEY=VALUE`
    overrides on top: another folder (`data.root`) or another dataset of the same format (`data.name`, `.mean`,
    `.std`). Downloading stays off unless `data.download=true`."""
    path = tricks.existing_checkpoint(checkpoint, "ckpt_path")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True).get("datamodule_hyper_parameters")
    except Exception as err:
        raise ConfigError(f"ckpt_path={checkpoint}: {unreadable_reason(err)}") from None
    run_config = path.resolve().parents[1] / ".hydra" / "config.yaml"  # older checkpoints: the run's config
    if saved is None and run_config.is_file():
        data = OmegaConf.load(run_config).data
        saved = {key: OmegaConf.to_object(data[key]) if OmegaConf.is_config(data[key]) else data[key]
                 for key in data if key != "_target_"}
    defaults = {name: p.default for name, p in inspect.signature(MNISTDataModule).parameters.items()}
    settings = {**defaults, **(saved or {}), "download": False}
    for key, text in overrides.items():
        name = key.removeprefix("data.")
        if name not in defaults or name == "augment":
            allowed = ", ".join(f"data.{k}" for k in defaults if k != "augment")
            raise ConfigError(f"unknown key {key!r}; allowed: {allowed}")
        try:
            settings[name] = parse_value(text, defaults[name])
        except ValueError as err:
            raise ConfigError(f"{key}={text}: {name} takes {type(defaults[name]).__name__} values ({err})") from None
    return MNISTDataModule(**settings)


def load_teacher(checkpoint: str, num_classes: int) -> torch.nn.Module:
    """A frozen network in eval mode from an earlier run's checkpoint, for knowledge distillation."""
    teacher = load_classifier(checkpoint, "tricks.distill_teacher").net
    if teacher.fc2.out_features != num_classes:
        raise ConfigError(f"tricks.distill_teacher={checkpoint}: the teacher predicts {teacher.fc2.out_features} "
                          f"classes, this run {num_classes}")
    return teacher.eval().requires_grad_(False)

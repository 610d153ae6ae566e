"""Semantic segmentation of digit canvases (mnistlab.data.canvas): the classification task's plumbing (network,
optimizer and schedule, transfer, compile, channels_last) with a per-pixel loss and dataset-level IoU metrics."""

from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from torchvision.transforms.v2 import functional as TF

from mnistlab.callbacks.views import colour_masks
from mnistlab.data.canvas import CanvasDataModule
from mnistlab.errors import ConfigError
from mnistlab.image_files import INK_SHARE, ink_band_height, needs_inversion, read_grayscale
from mnistlab.tasks.classification import Classifier

# Tricks that act on whole-image labels: they have no per-pixel meaning here (soft labels blur the pixels).
CLASSIFICATION_ONLY = ("mixup_alpha", "cutmix_alpha", "distill_teacher")


class Segmenter(Classifier):
    """Per-pixel cross-entropy (label smoothing applies; `ignore_index` pixels are skipped), and, per stage, the
    mean IoU over all classes including the background, over the digit classes alone, the pixel accuracy and the
    IoU of each class: confusion matrices accumulated over the whole set (torchmetrics' JaccardIndex, as
    torchvision's segmentation reference computes mIoU), not means of per-image scores."""

    TRAIN_ACCURACY = "train/pixel_acc"
    DATA_MODULE = CanvasDataModule
    ENSEMBLES = False
    TEST_METRICS = ("test/miou", "test/miou_digits", "test/pixel_acc", "test/loss")  # mnistlab-eval's, in order

    def __init__(self, model: dict, optimizer: dict, scheduler: dict | None = None, *, ignore_index: int, **tricks):
        for name in CLASSIFICATION_ONLY:
            if tricks.get(name):
                raise ConfigError(f"tricks.{name}={tricks[name]}: a classification trick; segmentation trains on "
                                  "per-pixel labels (use it for the classifier whose backbone you transfer)")
        super().__init__(model, optimizer, scheduler, **tricks)
        self.ignore_index = ignore_index
        classes = self.net.num_classes
        pixels = dict(num_classes=classes, ignore_index=ignore_index, validate_args=False)
        self.val_acc = MulticlassAccuracy(average="micro", multidim_average="global", **pixels)
        self.test_acc = MulticlassAccuracy(average="micro", multidim_average="global", **pixels)
        self.val_iou = MulticlassJaccardIndex(average="none", **pixels)
        self.test_iou = MulticlassJaccardIndex(average="none", **pixels)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor):
        logits = self(x)
        loss = F.cross_entropy(logits, y, ignore_index=self.ignore_index,
                               label_smoothing=self.hparams.label_smoothing)
        return loss, logits, y

    def answer_counts(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(correct pixels, labelled pixels) of one training batch: ignore_index pixels count in neither."""
        labelled = labels != self.ignore_index
        return ((logits.argmax(1) == labels) & labelled).sum(), labelled.sum()

    def _evaluate(self, batch, stage: str, accuracy: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        predicted = logits.argmax(1)
        accuracy.update(predicted, y)
        (self.val_iou if stage == "val" else self.test_iou).update(predicted, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y, ignore_index=self.ignore_index), on_epoch=True,
                 prog_bar=True, batch_size=len(y), sync_dist=True)
        return logits

    def log_iou(self, stage: str, iou: MulticlassJaccardIndex, accuracy: MulticlassAccuracy) -> torch.Tensor:
        per_class = iou.compute()
        miou = per_class.mean()
        names = self.trainer.datamodule.class_names if self.trainer.datamodule is not None else range(len(per_class))
        self.log_dict({f"{stage}/miou": miou, f"{stage}/miou_digits": per_class[1:].mean(),
                       f"{stage}/pixel_acc": accuracy.compute(),
                       **{f"{stage}/iou/{name}": value for name, value in zip(names, per_class, strict=True)}},
                      prog_bar=False)
        iou.reset()
        accuracy.reset()
        return miou

    def on_validation_epoch_end(self) -> None:
        miou = self.log_iou("val", self.val_iou, self.val_acc)
        if self.trainer.sanity_checking:
            return  # the sanity check's batches are not a validation result
        self.val_best.update(miou)
        self.log("val/miou_best", self.val_best.compute(), prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self.log_iou("test", self.test_iou, self.test_acc)

    # What the tools ask a task (see tasks/classification.py).

    @classmethod
    def recognises(cls, saved: dict) -> bool:
        """A checkpoint that names no task is a segmentation run's if its data module made canvases."""
        return "canvas_size" in (saved.get("datamodule_hyper_parameters") or {})

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, ignore_index=self.ignore_index)

    def check_data(self, data: CanvasDataModule, what: str) -> None:
        """The data must have the channels and classes the network was built for (it takes canvases of any size)."""
        wants = (self.net.input_shape[0], self.net.num_classes)
        has = (data.hparams.in_channels, data.segmentation_classes)
        if wants != has:
            raise ConfigError(f"{what}: the network takes {wants[0]}-channel canvases and labels {wants[1]} classes, "
                              f"but the data ({data.name}) has {has[0]} channel(s) and {has[1]} classes with the "
                              "background")

    def evaluation(self, trainer: pl.Trainer, data: CanvasDataModule, results: dict) -> dict:
        """mnistlab-eval's figures: the dataset-level IoUs and pixel accuracy of Lightning's test pass."""
        return {**{key: results[key] for key in self.TEST_METRICS}, "canvases": data.canvases["test"],
                "canvas_size": data.canvas_size,
                "per_class_iou": {name: results[f"test/iou/{name}"] for name in data.class_names}}

    @classmethod
    def evaluation_rows(cls, metrics: dict) -> list[tuple[str, str]]:
        size = metrics["canvas_size"]
        return [("test set", f"{metrics['canvases']} canvases ({size}x{size}) of {metrics['dataset']} digits in "
                             f"{metrics['root']}, {metrics['precision']}"),
                *((key, f"{metrics[key]:.4f}") for key in cls.TEST_METRICS),
                ("IoU per class", "  ".join(f"{name} {iou:.3f}" for name, iou in metrics["per_class_iou"].items()))]

    def predict_images(self, data: CanvasDataModule, paths: list[str], settings) -> list[dict]:
        """For each image: its colour mask written as NAME.mask.png (in `settings.output`, else beside the image), and
        the share of its labelled pixels per class. The image is scaled so that its digits are as tall as the
        training digits (`settings.digit_height`: auto measures them), labelled, and the labels scaled back."""
        digit_height, invert = settings.digit_height, str(settings.invert).lower()
        if digit_height != "auto" and not (isinstance(digit_height, int) and digit_height >= 4):
            raise ConfigError(f"digit_height={digit_height}: give auto, or the digits' height in pixels (>= 4)")
        trained_height = round(data.image_size * INK_SHARE[data.name])  # the ink of a training digit, in pixels
        folder = Path(settings.output) if settings.output else None
        classes = self.net.num_classes
        rows = []
        for path in paths:
            gray = read_grayscale(path)
            inverted = needs_inversion(gray) if invert == "auto" else invert == "true"
            gray = 1 - gray if inverted else gray
            measured = ink_band_height(gray) if digit_height == "auto" else digit_height
            scale = trained_height / measured if measured else 1.0
            height, width = gray.shape
            size = [max(4, round(height * scale / 4) * 4), max(4, round(width * scale / 4) * 4)]  # the net pools by 4
            scaled = TF.resize(gray[None, None], size, antialias=True).clamp(0, 1)
            with torch.no_grad():
                labels = self(data.normalize(scaled * 255)).argmax(1)
            labels = TF.resize(labels[None].byte(), [height, width], interpolation=TF.InterpolationMode.NEAREST)[0, 0]
            mask = (colour_masks(labels[None].long(), classes, data.ignore_index)[0] * 255).byte()
            target = (folder or Path(path).parent) / f"{Path(path).stem}.mask.png"
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.permute(1, 2, 0).numpy()).save(target)
            except OSError as err:
                raise ConfigError(f"output: cannot write {target} ({err.strerror or err})") from None
            counts = torch.bincount(labels.flatten().long(), minlength=classes)[1:]  # digits, not background
            shares = counts / counts.sum().clamp(min=1)
            found = [(data.class_names[i + 1], float(shares[i])) for i in shares.argsort(descending=True).tolist()
                     if shares[i] >= 0.05]
            answer = "   ".join(f"{name} {share:4.0%}" for name, share in found) or "no digit"
            rows.append({"image": path, "inverted": inverted, "mask": str(target), "scale": scale, "found": found,
                         "answer": f"{answer}  -> {target}"})
        return rows

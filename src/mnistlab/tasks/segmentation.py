"""Semantic segmentation of digit canvases (mnistlab.data.canvas): the classification task's plumbing (network,
optimizer and schedule, transfer, compile, channels_last) with a per-pixel loss and dataset-level IoU metrics."""

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from mnistlab.errors import ConfigError
from mnistlab.tasks.classification import Classifier

# Tricks that act on whole-image labels: they have no per-pixel meaning here (soft labels blur the pixels).
CLASSIFICATION_ONLY = ("mixup_alpha", "cutmix_alpha", "distill_teacher")


class Segmenter(Classifier):
    """Per-pixel cross-entropy (label smoothing applies; `ignore_index` pixels are skipped), and, per stage, the
    mean IoU over all classes including the background, over the digit classes alone, the pixel accuracy and the
    IoU of each class: confusion matrices accumulated over the whole set (torchmetrics' JaccardIndex, as
    torchvision's segmentation reference computes mIoU), not means of per-image scores."""

    TRAIN_ACCURACY = "train/pixel_acc"

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
        self.val_acc_best.update(miou)
        self.log("val/miou_best", self.val_acc_best.compute(), prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self.log_iou("test", self.test_iou, self.test_acc)

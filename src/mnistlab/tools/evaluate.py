"""mnistlab-eval: the test metrics of a saved checkpoint, on its own test set or on another of the same format.

    mnistlab-eval ckpt_path=logs/default/runs/<time>/checkpoints/epoch009.ckpt
    mnistlab-eval ckpt_path=CKPT data.root=DIR                     # the same dataset in another folder
    mnistlab-eval ckpt_path=CKPT data=fashion_mnist data.root=DIR  # another dataset of the data group
    mnistlab-eval ckpt_path=CKPT json=metrics.json accelerator=cpu precision=32-true  # configs/eval.yaml
    mnistlab-eval ckpt_path=[CKPT1,CKPT2,CKPT3]                    # their ensemble: the mean of their logits

The data settings come from the checkpoint (the run's data module saves them); `data=NAME` takes another
dataset's (configs/data/NAME.yaml: name, statistics, shapes; the folder stays the checkpoint's unless
`data.root=` is given), and `data.KEY=VALUE` changes one.
Only the test files are needed. The test pass is Lightning's, as at the end of training, at the precision the
run trained at (saved in the checkpoint) unless `precision=` says otherwise, so the figures match what training
reported.
"""

import json
import os
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from torchmetrics.classification import MulticlassAccuracy

from mnistlab.checkpoints import load_datamodule
from mnistlab.config import DATASET_KEYS
from mnistlab.data.canvas import CanvasDataModule
from mnistlab.data.digits import MNISTDataModule
from mnistlab.errors import ConfigError
from mnistlab.models.ensemble import Ensemble
from mnistlab.tasks.classification import Classifier, load_classifier
from mnistlab.tools.cli import given_keys, run_tool

SEGMENTATION_METRICS = ("test/miou", "test/miou_digits", "test/pixel_acc", "test/loss")


def check_fit(module: Classifier, data: MNISTDataModule, checkpoint: str) -> None:
    """The data must have the image shape and class count the network was built for (for segmentation, the
    channels and classes: the network takes canvases of any size)."""
    channels, size, _ = module.net.input_shape
    if isinstance(data, CanvasDataModule):
        wants, has = (channels, module.net.num_classes), (data.hparams.in_channels, data.segmentation_classes)
        if wants != has:
            raise ConfigError(f"ckpt_path={checkpoint}: the network takes {wants[0]}-channel canvases and labels "
                              f"{wants[1]} classes, but the data ({data.name}) has {has[0]} channel(s) and {has[1]} "
                              "classes with the background")
        return
    wants = (channels, size, module.net.num_classes)
    has = (data.hparams.in_channels, data.image_size, data.num_classes)
    if wants != has:
        raise ConfigError(f"ckpt_path={checkpoint}: the network takes {wants[0]}x{wants[1]}x{wants[1]} images and "
                          f"predicts {wants[2]} classes, but the data ({data.name}) has {has[0]}x{has[1]}x{has[1]} "
                          f"images and {has[2]} classes")


def check_same_data(checkpoints: list[str]) -> None:
    """An ensemble's members must have been trained on the same dataset and normalisation as the first."""
    first, *others = (load_datamodule(path, {}) for path in checkpoints)
    for path, trained_on in zip(checkpoints[1:], others, strict=True):
        if (trained_on.name, trained_on.mean, trained_on.std) != (first.name, first.mean, first.std):
            raise ConfigError(f"ckpt_path: {path} was trained on {trained_on.name} (mean {trained_on.mean}, std "
                              f"{trained_on.std}), {checkpoints[0]} on {first.name} (mean {first.mean}, std "
                              f"{first.std}); an ensemble's members must share their data")


def evaluate(checkpoint: str | list[str], data_overrides: dict[str, str], accelerator: str = "auto",
             precision: str = "") -> dict:
    """test/acc, test/loss and per-class accuracy of a checkpoint on a test set; of a list of checkpoints, their
    ensemble's (the mean of their logits, as for a distillation teacher). The data settings are the first's."""
    checkpoints = [checkpoint] if isinstance(checkpoint, str) else checkpoint
    if not checkpoints:
        raise ConfigError("ckpt_path=[]: give a checkpoint, or a list [A,B,...] to score their ensemble")
    checkpoint = checkpoints[0] if len(checkpoints) == 1 else checkpoints  # [A] is A
    members = [load_classifier(path, "ckpt_path") for path in checkpoints]
    data = load_datamodule(checkpoints[0], data_overrides)
    segmentation = isinstance(data, CanvasDataModule)
    if segmentation and len(members) > 1:
        raise ConfigError("ckpt_path: an ensemble is scored for classifiers; give one segmentation checkpoint")
    for member, path in zip(members, checkpoints, strict=True):
        check_fit(member, data, path)
    module = members[0]
    if len(members) > 1:
        check_same_data(checkpoints)
        module.net = Ensemble([member.net for member in members])
    precision = precision or module.trained_precision
    try:
        trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    except (MisconfigurationException, ValueError) as err:
        raise ConfigError(f"accelerator={accelerator} precision={precision}: {str(err).splitlines()[0]}") from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        results = trainer.test(module, datamodule=data, verbose=False)[0]
    where = {"precision": precision, "dataset": data.name, "root": str(data.root),
             "checkpoint": str(checkpoint) if isinstance(checkpoint, str) else [str(path) for path in checkpoint]}
    if segmentation:
        names = data.class_names
        return {**{key: results[key] for key in SEGMENTATION_METRICS},
                "canvases": data.canvases["test"], "canvas_size": data.canvas_size, **where,
                "per_class_iou": {name: results[f"test/iou/{name}"] for name in names}}
    per_class = MulticlassAccuracy(num_classes=data.num_classes, average=None).to(module.device)
    module.eval()
    with torch.no_grad(), trainer.strategy.precision_plugin.forward_context():
        for x, y in data.test_dataloader():
            per_class.update(module(x), y)
    images, _ = data.splits["test"]
    return {"test/acc": results["test/acc"], "test/loss": results["test/loss"], "images": len(images), **where,
            "per_class_acc": dict(zip(data.class_names, per_class.compute().tolist(), strict=True))}


def report(metrics: dict) -> str:
    checkpoint = metrics["checkpoint"]
    shown = checkpoint if isinstance(checkpoint, str) else f"the ensemble of {', '.join(checkpoint)}"
    if "per_class_iou" in metrics:
        size, per_class = metrics["canvas_size"], metrics["per_class_iou"]
        return "\n".join([
            f"checkpoint      {shown}",
            f"test set        {metrics['canvases']} canvases ({size}x{size}) of {metrics['dataset']} digits in "
            f"{metrics['root']}, {metrics['precision']}",
            *(f"{key:<16}{metrics[key]:.4f}" for key in SEGMENTATION_METRICS),
            "IoU per class   " + "  ".join(f"{name} {iou:.3f}" for name, iou in per_class.items()),
        ])
    per_class = "  ".join(f"{name} {acc:.3f}" for name, acc in metrics["per_class_acc"].items())
    return "\n".join([
        f"checkpoint  {shown}",
        f"test set    {metrics['images']} images of {metrics['dataset']} in {metrics['root']}, {metrics['precision']}",
        f"test/acc    {metrics['test/acc']:.4f}",
        f"test/loss   {metrics['test/loss']:.4f}",
        f"per class   {per_class}",
    ])


def evaluate_command(cfg: DictConfig, args: list[str]) -> None:
    # data=NAME: that dataset's identity (name, statistics, shapes) from configs/data/NAME.yaml; data.KEY on top.
    chosen = DATASET_KEYS if any(arg.split("=")[0] == "data" for arg in args) else ()
    keys = [*chosen, *sorted(given_keys(args, "data") - set(chosen))]
    data_overrides = {f"data.{key}": cfg.data[key] for key in keys}
    if cfg.json:  # checked before the evaluation, not after it has printed its results
        folder = Path(cfg.json).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK) or Path(cfg.json).is_dir():
            raise ConfigError(f"json={cfg.json}: cannot write there ({folder} is not a writable folder"
                              f"{'' if not Path(cfg.json).is_dir() else ', and that name is a folder'})")
    metrics = evaluate(OmegaConf.to_object(cfg.ckpt_path) if OmegaConf.is_list(cfg.ckpt_path) else cfg.ckpt_path,
                       data_overrides, cfg.accelerator, cfg.precision or "")
    print(report(metrics))
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(metrics, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    run_tool(evaluate_command, "eval", __doc__, argv)

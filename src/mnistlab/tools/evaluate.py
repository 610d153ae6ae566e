"""mnistlab-eval: the test figures of a saved checkpoint, as its task reports them, on its own test set or on
another of the same format.

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
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from mnistlab.config import DATASET_KEYS
from mnistlab.errors import ConfigError
from mnistlab.models.ensemble import Ensemble
from mnistlab.tasks.classification import Classifier
from mnistlab.tasks.registry import load_datamodule, load_task
from mnistlab.tools.cli import given_keys, run_tool


def check_same_data(checkpoints: list[str]) -> None:
    """An ensemble's members must have been trained on the same dataset and normalisation as the first."""
    first, *others = (load_datamodule(path, {}) for path in checkpoints)
    for path, trained_on in zip(checkpoints[1:], others, strict=True):
        if (trained_on.name, trained_on.mean, trained_on.std) != (first.name, first.mean, first.std):
            raise ConfigError(f"ckpt_path: {path} was trained on {trained_on.name} (mean {trained_on.mean}, std "
                              f"{trained_on.std}), {checkpoints[0]} on {first.name} (mean {first.mean}, std "
                              f"{first.std}); an ensemble's members must share their data")


def evaluation(checkpoint: str | list[str], data_overrides: dict[str, str], accelerator: str = "auto",
               precision: str = "") -> tuple[Classifier, dict]:
    """(the task module, its test figures as its task reports them) of a checkpoint on a test set; of a list of
    checkpoints, their ensemble's (the mean of their logits, as for a distillation teacher), where the task scores
    ensembles. The data settings are the first's."""
    checkpoints = [checkpoint] if isinstance(checkpoint, str) else checkpoint
    if not checkpoints:
        raise ConfigError("ckpt_path=[]: give a checkpoint, or a list [A,B,...] to score their ensemble")
    checkpoint = checkpoints[0] if len(checkpoints) == 1 else checkpoints  # [A] is A
    members = [load_task(path, "ckpt_path") for path in checkpoints]
    module = members[0]
    if len(members) > 1 and not all(type(member).ENSEMBLES for member in members):
        raise ConfigError(f"ckpt_path: {type(module).__name__} checkpoints are not scored as an ensemble; give one "
                          "checkpoint")
    data = load_datamodule(checkpoints[0], data_overrides)
    for member, path in zip(members, checkpoints, strict=True):
        member.check_data(data, f"ckpt_path={path}")
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
    return module, {**module.evaluation(trainer, data, results), **where}


def evaluate(checkpoint: str | list[str], data_overrides: dict[str, str], accelerator: str = "auto",
             precision: str = "") -> dict:
    """The test figures of `evaluation`."""
    return evaluation(checkpoint, data_overrides, accelerator, precision)[1]


def report(module: Classifier, metrics: dict) -> str:
    checkpoint = metrics["checkpoint"]
    shown = checkpoint if isinstance(checkpoint, str) else f"the ensemble of {', '.join(checkpoint)}"
    rows = [("checkpoint", shown), *module.evaluation_rows(metrics)]
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label:<{width}}{value}" for label, value in rows)


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
    module, metrics = evaluation(
        OmegaConf.to_object(cfg.ckpt_path) if OmegaConf.is_list(cfg.ckpt_path) else cfg.ckpt_path, data_overrides,
        cfg.accelerator, cfg.precision or "")
    print(report(module, metrics))
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(metrics, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    run_tool(evaluate_command, "eval", __doc__, argv)

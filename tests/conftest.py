"""Shared fixtures: small synthetic IDX datasets, runs in process (the config train.py composes, and its train()),
the tools in process, and a runner for the real `python train.py` where the process itself is the point."""

import contextlib
import io
import logging
import os
import runpy
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback
from torch import nn

from mnistlab import train as train_module
from mnistlab.config import compose_run_config, stated_settings
from mnistlab.data.synthetic import write_synthetic_dataset
from mnistlab.models.registry import build_network
from mnistlab.tasks.classification import Classifier
from mnistlab.train import train

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist each worker has a core of its own: one torch thread each, for the processes it starts too,
# instead of two workers' thread pools spinning against each other on two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
# Fast settings for end-to-end runs on the synthetic data (1200 training images, 300 test images).
FAST = ["data.val_size=200", "data.batch_size=64", "data.eval_batch_size=500", "trainer.max_epochs=2",
        "trainer.log_every_n_steps=5"]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n_train=1200, n_test=300)


def configured(section: str, *choices: str, **settings):
    """What `section` (`data`, `callbacks.ema`) of a run with the group `choices` (`task=segmentation`) builds, from
    the settings configs/ states for it with `settings` on top: a test gives what it tests, configs/ the rest (the
    classes have no defaults of their own)."""
    stated = OmegaConf.to_container(stated_settings(section, choices), resolve=True)
    return get_object(stated.pop("_target_"))(**{**stated, **settings})


def classifier(model: dict, optimizer: dict, scheduler: dict | None = None, **tricks) -> Classifier:
    """A Classifier of `model` with the tricks configs/train.yaml states, `tricks` on top."""
    stated = OmegaConf.to_container(stated_settings("tricks"), resolve=True)
    return Classifier(model, optimizer, scheduler, **{**stated, **tricks})


def network(name: str, **settings) -> nn.Module:
    """mnistlab.models.NAME with `settings`, the rest as configs/model/ states it (build_network fills them in)."""
    return build_network({"_target_": f"mnistlab.models.{name}", **settings})


def offline_env() -> dict:
    """The environment with every download routed to a closed local port: offline, whatever the machine."""
    closed = "http://127.0.0.1:9"
    return {**os.environ, "http_proxy": closed, "https_proxy": closed, "HTTP_PROXY": closed,
            "HTTPS_PROXY": closed, "no_proxy": "", "NO_PROXY": ""}


def run_train(*overrides: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python train.py OVERRIDES...` exactly as a user types it, from the repository root."""
    return subprocess.run([sys.executable, "train.py", *overrides], cwd=cwd, env=offline_env(),
                          capture_output=True, text=True, timeout=timeout)


def train_in_process(folder: Path, *overrides: str) -> dict:
    """One run of `python train.py OVERRIDES hydra.run.dir=FOLDER`, in this process: its final metrics."""
    cfg = compose_run_config(list(overrides), output_dir=str(folder))
    with open_dict(cfg):
        del cfg["hydra"]  # as Hydra hands a run its config: its own settings stay in HydraConfig
    return train(cfg)


def run_in_process(main: Callable[[list[str]], None], *args: str) -> subprocess.CompletedProcess:
    """A tool's `main(argv)` in this process, as a CompletedProcess: its exit status, stdout and stderr."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exit_:  # as the interpreter ends: None is 0, a number the status, anything else printed
            code = exit_.code or 0
            if not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def run_script(monkeypatch, name: str, *args: str) -> subprocess.CompletedProcess:
    """`python scripts/NAME ARGS` without the process: the script run as __main__ in this process."""
    monkeypatch.setattr(sys, "argv", [name, *args])
    monkeypatch.setattr(sys, "path", sys.path[:])  # some scripts put src/ first
    return run_in_process(lambda argv: runpy.run_path(str(REPO / "scripts" / name), run_name="__main__"), *args)


def train_main(monkeypatch, *args: str) -> subprocess.CompletedProcess:
    """`python train.py ARGS` without the process: train.py's `main()`, in this process, as a CompletedProcess. For
    commands whose process is not the point (an error before Hydra starts or inside its run, a sweep whose folder is
    what is read); the SIGINT handler `main` sets and the logging handlers Hydra adds are put back, so later tests
    see neither."""
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    root, sigint = logging.getLogger(), signal.getsignal(signal.SIGINT)
    handlers, level = root.handlers[:], root.level
    try:
        return run_in_process(lambda argv: train_module.main(), *args)
    finally:
        signal.signal(signal.SIGINT, sigint)
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()  # the run's train.log
        root.handlers[:] = handlers
        root.setLevel(level)


class RecordWeights(Callback):
    """The last layer's weights after every training step, for checking weight averages against their formula."""

    def __init__(self):
        self.after_step = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step.append(pl_module.net.head[-1].weight.detach().clone())


def older_checkpoint(checkpoint: Path, copy: Path) -> Path:
    """`checkpoint` as mnistlab wrote it before checkpoints named their task and data module, and before the best
    validation value was `val_best`: written to `copy`."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved["mnistlab"] = {key: value for key, value in saved["mnistlab"].items() if key not in ("task", "data")}
    saved["state_dict"] = {key.replace("val_best.", "val_acc_best.", 1): value
                           for key, value in saved["state_dict"].items()}
    torch.save(saved, copy)
    return copy

"""The three training loops mnistlab-bench times against each other: mnistlab as users run it (a Lightning fit
built as `python train.py` builds it), the plain loop over the same device-resident data (the floor), and the
classic loop of PyTorch's MNIST example. Each gives the Timing of one timed epoch after an untimed warm-up epoch."""

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from mnistlab.build import build_run, build_task
from mnistlab.errors import ConfigError
from mnistlab.execution import StepGroup
from mnistlab.models.registry import build_config_network

# PyTorch's examples/mnist: batch 64, test batch 1000, MNIST's mean and std; the SGD of its classic version.
TUTORIAL_BATCH, TUTORIAL_TEST_BATCH, TUTORIAL_NORMALIZE = 64, 1000, ((0.1307,), (0.3081,))
TUTORIAL_SGD = {"lr": 0.01, "momentum": 0.5}


class Timing(NamedTuple):
    """One timed epoch: its seconds (training and validation), the training examples it ran, and the seconds of its
    training steps alone (each step's data, forward, backward and optimizer, with what the loop does around it)."""

    seconds: float
    images: int
    step_seconds: float


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(pl.Callback):
    """Times the second epoch of a fit (the first, untimed, is the warm-up), from its start to the end of
    training: the fit is stopped right after that epoch's validation, epoch-end callbacks (images, histograms,
    checkpoints) and epoch-end logging. That is a typical epoch of a run of any length. Outside it: the validation
    figures (the confusion matrix and the mistakes, every 5th epoch and at the last), and what callbacks do once
    a run, at its end (the projector's features): run_lightning puts the timer first, so its `on_train_end`
    stops the clock before theirs. With a `profiler`, profiles that epoch too."""

    TIMED_EPOCH = 1

    def __init__(self, profiler: torch.profiler.profile | None = None):
        self.profiler, self.start, self.seconds, self.images, self.step_seconds = profiler, 0.0, 0.0, 0, 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.TIMED_EPOCH:
            sync(pl_module.device)
            self.images, self.step_seconds, self.start = 0, 0.0, time.perf_counter()
            if self.profiler is not None:
                self.profiler.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.images += batch.images if isinstance(batch, StepGroup) else len(batch[1])

    def end_of_steps(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The timed epoch's training steps end where its validation (or, without one, its end) begins: one clock
        read, and one device sync, an epoch."""
        if trainer.current_epoch == self.TIMED_EPOCH and not trainer.sanity_checking and not self.step_seconds:
            sync(pl_module.device)
            self.step_seconds = time.perf_counter() - self.start

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end_of_steps(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end_of_steps(trainer, pl_module)
        if trainer.current_epoch == self.TIMED_EPOCH:
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sync(pl_module.device)
        if not self.start:
            raise ConfigError(f"the fit ended before epoch {self.TIMED_EPOCH + 1}, which the benchmark times "
                              "(trainer.max_steps or trainer.max_time too small?)")
        self.seconds = time.perf_counter() - self.start
        if self.profiler is not None:
            self.profiler.stop()


def run_lightning(cfg: DictConfig, profiler: torch.profiler.profile | None = None) -> Timing:
    """(a): build the run exactly as mnistlab.train.train does, fit it, time its second epoch (EpochTimer stops
    the fit there). The progress
    bar and the model summary still draw (they are part of a user's run) but into os.devnull, to keep the
    table readable."""
    pl.seed_everything(cfg.seed, workers=True)
    timer = EpochTimer(profiler)
    datamodule, module, trainer = build_run(cfg, (timer,))
    trainer.callbacks.insert(0, trainer.callbacks.pop(trainer.callbacks.index(timer)))  # first in every hook
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        trainer.fit(module, datamodule=datamodule)
    return Timing(timer.seconds, timer.images, timer.step_seconds)


def timed(epoch: Callable[[], tuple[int, float]], device: torch.device) -> Timing:
    """One untimed warm-up epoch, then the Timing of a timed one; `epoch` returns (training images, seconds of
    its training loop)."""
    epoch()
    sync(device)
    start = time.perf_counter()
    images, step_seconds = epoch()
    sync(device)
    return Timing(time.perf_counter() - start, images, step_seconds)


def run_plain(cfg: DictConfig, datamodule, device: torch.device, batch: int, bf16: bool) -> Timing:
    """(b): the floor, a warm-up epoch and a timed one (plain_epoch)."""
    return timed(plain_epoch(cfg, datamodule, device, batch, bf16), device)


def plain_epoch(cfg: DictConfig, datamodule, device: torch.device, batch: int,
                bf16: bool) -> Callable[[], tuple[int, float]]:
    """One epoch of the plain loop and its validation pass; returns (examples trained, seconds of the training
    loop). The task supplies the
    network, its plain criterion and its right answers, the data module the batches (uint8 on the device, composed
    as its training loader composes them) and the validation set. No host read per step: the shuffle, the batches
    and the accuracy stay on the device."""
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    net = task.net.to(device)
    if bf16:
        net.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optimizer, _partial_=True)(net.parameters())
    val_x, val_y = (t.to(device) for t in datamodule.plain_validation())
    eval_batch = cfg.data.eval_batch_size
    # The run's own schedule (warmup included), stepped per batch as in a: a large batch's lr needs its warmup.
    steps_per_epoch = datamodule.training_items() // batch
    schedule = instantiate(cfg.scheduler)(optimizer, steps_per_epoch * cfg.trainer.max_epochs, steps_per_epoch)

    def epoch() -> tuple[int, float]:
        net.train()
        start = time.perf_counter()
        for images, labels in datamodule.plain_batches(batch):
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss = task.loss(net(datamodule.normalize(images)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
        sync(device)
        step_seconds = time.perf_counter() - start
        net.eval()
        correct = torch.zeros((), dtype=torch.long, device=device)
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            for start in range(0, len(val_y), eval_batch):
                logits = net(datamodule.normalize(val_x[start : start + eval_batch]))
                correct += task.answer_counts(logits, val_y[start : start + eval_batch])[0]
        correct.item()  # the epoch's one host read, as a real loop reports its accuracy
        return steps_per_epoch * batch, step_seconds

    return epoch


def run_tutorial(cfg: DictConfig, root: Path, train_size: int, val_size: int, device: torch.device) -> Timing:
    """(c): PyTorch's examples/mnist loop (its every-10-batches loss print left out), with our model and the
    classic example's SGD (lr 0.01, momentum 0.5)."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*TUTORIAL_NORMALIZE)])
    dataset = datasets.MNIST(str(root), train=True, transform=transform)
    loader_kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    train_loader = DataLoader(Subset(dataset, range(train_size)), batch_size=TUTORIAL_BATCH, shuffle=True,
                              **loader_kwargs)
    test_loader = DataLoader(Subset(dataset, range(train_size, train_size + val_size)),
                             batch_size=TUTORIAL_TEST_BATCH, **loader_kwargs)
    torch.manual_seed(cfg.seed)
    net = build_config_network(OmegaConf.to_container(cfg.model, resolve=True)).to(device)
    optimizer = torch.optim.SGD(net.parameters(), **TUTORIAL_SGD)

    def epoch() -> tuple[int, float]:
        net.train()
        start = time.perf_counter()
        for data, target in train_loader:
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(net(data), target)
            loss.backward()
            optimizer.step()
        sync(device)
        step_seconds = time.perf_counter() - start
        net.eval()
        test_loss = correct = 0  # summed with a host read per batch, as the example's test() does
        with torch.no_grad():
            for data, target in test_loader:
                data, target = data.to(device), target.to(device)
                output = net(data)
                test_loss += F.cross_entropy(output, target, reduction="sum").item()
                correct += output.argmax(1).eq(target).sum().item()
        return len(train_loader.dataset), step_seconds

    return timed(epoch, device)

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
from mnistlab.execution import StepGroup, step_losses
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


def run_lightning(cfg: DictConfig, profiler: torch.profiler.profile | None = None,
                  last: pl.Callback | None = None) -> Timing:
    """(a): build the run exactly as mnistlab.train.train does, fit it, time its second epoch (EpochTimer stops
    the fit there). The progress bar and the model summary still draw (they are part of a user's run) but into
    os.devnull, to keep the table readable. `last`: a callback that runs after every other in each hook."""
    pl.seed_everything(cfg.seed, workers=True)
    timer = EpochTimer(profiler)
    datamodule, module, trainer = build_run(cfg, (timer,) + ((last,) if last else ()))
    trainer.callbacks.insert(0, trainer.callbacks.pop(trainer.callbacks.index(timer)))  # first in every hook
    if last is not None:
        trainer.callbacks.append(trainer.callbacks.pop(trainer.callbacks.index(last)))
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
    """(b): the floor, a warm-up epoch and a timed one (PlainLoop.epoch)."""
    return timed(PlainLoop(cfg, datamodule, device, batch, bf16).epoch, device)


class PlainLoop:
    """(b), the floor. The task supplies the network, its plain criterion and its right answers, the data module
    the batches (uint8 on the device, composed as its training loader composes them) and the validation set. No
    host read per step: the shuffle, the batches and the accuracy stay on the device."""

    def __init__(self, cfg: DictConfig, datamodule, device: torch.device, batch: int, bf16: bool):
        torch.manual_seed(cfg.seed)
        self.task, self.datamodule, self.device = build_task(cfg), datamodule, device
        self.batch, self.bf16 = batch, bf16
        self.net = self.task.net.to(device)
        if bf16:
            self.net.to(memory_format=torch.channels_last)
        self.optimizer = instantiate(cfg.optimizer, _partial_=True)(self.net.parameters())
        self.val_x, self.val_y = (t.to(device) for t in datamodule.plain_validation())
        self.eval_batch = cfg.data.eval_batch_size
        # The run's own schedule (warmup included), stepped per batch as in a: a large batch's lr needs its warmup.
        self.steps_per_epoch = datamodule.training_items() // batch
        self.schedule = instantiate(cfg.scheduler)(self.optimizer, self.steps_per_epoch * cfg.trainer.max_epochs,
                                                   self.steps_per_epoch)
        self.stream = self.endless_batches()

    def endless_batches(self):
        while True:
            yield from self.datamodule.plain_batches(self.batch)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
            loss = self.task.loss(self.net(self.datamodule.normalize(images)), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()

    def epoch(self) -> tuple[int, float]:
        """One epoch in a fresh order and its validation pass: (examples trained, seconds of the training loop)."""
        self.net.train()
        start = time.perf_counter()
        for images, labels in self.datamodule.plain_batches(self.batch):
            self.step(images, labels)
        sync(self.device)
        step_seconds = time.perf_counter() - start
        self.net.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        with torch.no_grad(), torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
            for first in range(0, len(self.val_y), self.eval_batch):
                logits = self.net(self.datamodule.normalize(self.val_x[first : first + self.eval_batch]))
                correct += self.task.answer_counts(logits, self.val_y[first : first + self.eval_batch])[0]
        correct.item()  # the epoch's one host read, as a real loop reports its accuracy
        return self.steps_per_epoch * self.batch, step_seconds

    def steps(self, count: int) -> float:
        """The seconds of `count` training steps, going on from where the last call stopped."""
        self.net.train()
        sync(self.device)
        start = time.perf_counter()
        for _ in range(count):
            self.step(*next(self.stream))
        sync(self.device)
        return time.perf_counter() - start


class InterleavedSteps(pl.Callback):
    """a2's training steps against b's, group by group, in the epoch EpochTimer times: after each Lightning step
    (its group of optimizer steps) the plain loop runs as many steps. A pair lies within a second or so, where a
    shared machine's speed, which drifts over seconds, is nearly the same for both. Put last (run_lightning's
    `last`), so that a2's time holds every other callback's per-step hooks; each time also holds the step's
    share of Lightning's loop between groups."""

    WARMUP_STEPS = 10

    def __init__(self, plain: PlainLoop):
        self.plain, self.mark = plain, None
        self.pairs: list[tuple[float, float, int]] = []  # (a2 seconds, b seconds, optimizer steps) a group

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == EpochTimer.TIMED_EPOCH:
            self.plain.steps(self.WARMUP_STEPS)
            self.mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.mark is None:
            return
        sync(pl_module.device)
        seconds = time.perf_counter() - self.mark
        steps = len(step_losses(outputs, trainer)[0])
        self.pairs.append((seconds, self.plain.steps(steps), steps))
        self.mark = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.mark = None  # the timed epoch's steps are over

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.mark = None


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

"""Training speed of mnistlab against a plain PyTorch loop and the classic tutorial loop, in one process,
interleaved and repeated (the `mnistlab-bench` command, scripts/benchmark.py).

  a   mnistlab as users run it: the composed configs/train.yaml with its defaults (callbacks=default with
      inspection images, histograms and checkpoints, the TensorBoard logger, the progress bar, validation
      every epoch), built exactly as `mnistlab.train.train` builds it.
  a2  a with the batch, precision and memory format of b.
  b   the floor: a plain loop over the same device-resident uint8 tensors, same model, optimizer, batch and
      precision, per-batch standardisation like the data module, then a no-grad validation pass.
  c   the classic loop of PyTorch's MNIST example and most tutorials: torchvision's MNIST with per-sample
      ToTensor/Normalize, DataLoader(batch_size=64, shuffle=True; on CUDA num_workers=1, pin_memory), fp32,
      then a test-style pass at batch 1000.

Every variant trains on the same images and evaluates the same validation images. One measurement is one
untimed warm-up epoch, then one timed epoch; an epoch is the training pass plus its evaluation pass, so
"train img/s" = training images / epoch seconds.
"""

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from mnistlab.config import compose_run_config
from mnistlab.data.canvas import CanvasDataModule, compose
from mnistlab.data.files import ALL_FILES, SPLIT_FILES, TORCHVISION_DATASETS, find_idx_files
from mnistlab.data.idx import read_idx, write_idx
from mnistlab.data.synthetic import write_synthetic_dataset
from mnistlab.errors import ConfigError, DataError, MnistlabError
from mnistlab.execution import StepGroup, auto_steps_per_execution
from mnistlab.models.registry import build_config_network
from mnistlab.precision import bf16_support, cpu_model
from mnistlab.train import build_run
from mnistlab.validation import check_config

MNIST_SIZE = {"train": 60000, "test": 10000}  # the synthetic stand-in's size
# PyTorch's examples/mnist: batch 64, test batch 1000, MNIST's mean and std; the SGD of its classic version.
TUTORIAL_BATCH, TUTORIAL_TEST_BATCH, TUTORIAL_NORMALIZE = 64, 1000, ((0.1307,), (0.3081,))
TUTORIAL_SGD = {"lr": 0.01, "momentum": 0.5}
VARIANTS = {"a": "mnistlab, defaults", "a2": "mnistlab, b's settings", "b": "plain loop (floor)",
            "c": "classic tutorial loop", "a2k1": "a2 at one optimizer step per Lightning step"}
RATIOS = {"a/c": "mnistlab as users run it over the classic tutorial loop",
          "a2/b": "mnistlab at b's settings over the plain-loop floor"}
PROFILE_STEPS = 50
STATUS = Path("/proc/self/status")
PACKAGES = ("torch", "torchvision", "pytorch-lightning", "hydra-core", "torchmetrics")


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss() -> int:
    line = next(line for line in STATUS.read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated, reset per measurement"
    if STATUS.exists():
        return "peak resident set size of the process (VmRSS sampled every 10 ms), + its rise over the start"
    return "peak resident set size of the process so far (getrusage)"


class PeakMemory:
    """Peak memory while one measurement runs (see memory_kind): bytes in `peak`, its rise over the start in
    `rise` (on CUDA the allocator's peak is already per measurement, so the two are equal)."""

    def __init__(self, device: torch.device):
        self.device, self.start, self.peak, self.thread = device, 0, 0, None
        self.done = threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif STATUS.exists():
            self.start = self.peak = rss()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.01):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self.thread is not None:
            self.done.set()
            self.thread.join()
            self.peak = max(self.peak, rss())
        else:
            scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    @property
    def rise(self) -> int:
        return self.peak - self.start


def prepare_data(source: Path | None, train_images: int | None, folder: Path) -> int:
    """Write torchvision's layout folder/MNIST/raw (uncompressed IDX files), which both mnistlab's data module and
    torchvision's MNIST read: the first `train_images` of the source's training split and all of its test split,
    or synthetic data of MNIST's size without a source. Returns the number of training images."""
    raw = folder / "MNIST" / "raw"
    if source is None:
        write_synthetic_dataset(raw, train_images or MNIST_SIZE["train"], MNIST_SIZE["test"], gzipped=False)
    else:
        files = next(filter(None, (find_idx_files(source, name) for name in TORCHVISION_DATASETS)), None)
        if files is None:
            raise DataError(f"--data-root {source}: no MNIST-style data there; expected {', '.join(ALL_FILES)} "
                            f"(plain or .gz)")
        for stem, path in files.items():
            data = read_idx(path)
            write_idx(raw / stem, data[:train_images] if stem in SPLIT_FILES["train"] else data)
    available = len(read_idx(raw / SPLIT_FILES["train"][1]))
    if train_images and available < train_images:
        raise ConfigError(f"--train-images={train_images}, but {source} holds only {available} training images")
    return available


def compose_config(root: Path, val_size: int | None, device: torch.device, run_dir: Path,
                   overrides: list[str]) -> DictConfig:
    """configs/train.yaml as `python train.py` composes it, with the data at `root` and the run's output folder
    (`${hydra:runtime.output_dir}`) at `run_dir`. trainer.max_epochs stays as configured (EpochTimer stops the
    fit after its timed epoch), so the learning-rate schedule and the epochs that draw the validation figures
    are those of a user's run."""
    fixed = [f"data.root={root}", "data.download=false", f"trainer.accelerator={device.type}"]
    if val_size is not None:
        fixed.append(f"data.val_size={val_size}")
    cfg = compose_run_config(fixed + overrides, str(run_dir))
    check_config(cfg)  # what a run checks before it builds anything: the classes take their settings as given
    if not isinstance(cfg.trainer.max_epochs, int) or cfg.trainer.max_epochs <= EpochTimer.TIMED_EPOCH:
        raise ConfigError(f"trainer.max_epochs={cfg.trainer.max_epochs}: the benchmark times epoch "
                          f"{EpochTimer.TIMED_EPOCH + 1} of a run, so it must be >= {EpochTimer.TIMED_EPOCH + 1}")
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


class EpochTimer(pl.Callback):
    """Times the second epoch of a fit (the first, untimed, is the warm-up), from its start to the end of
    training: the fit is stopped right after that epoch's validation, epoch-end callbacks (images, histograms,
    checkpoints) and epoch-end logging. That is a typical epoch of a run of any length; the validation figures
    (the confusion matrix and the mistakes, every 5th epoch and at the last) fall outside it. With a `profiler`,
    profiles that epoch too."""

    TIMED_EPOCH = 1

    def __init__(self, profiler: torch.profiler.profile | None = None):
        self.profiler, self.start, self.seconds, self.images = profiler, 0.0, 0.0, 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.TIMED_EPOCH:
            sync(pl_module.device)
            self.images, self.start = 0, time.perf_counter()
            if self.profiler is not None:
                self.profiler.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.images += batch.images if isinstance(batch, StepGroup) else len(batch[1])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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


def run_lightning(cfg: DictConfig, profiler: torch.profiler.profile | None = None) -> tuple[float, int]:
    """(a): build the run exactly as mnistlab.train.train does, fit it, time its second epoch (EpochTimer stops
    the fit there). The progress
    bar and the model summary still draw (they are part of a user's run) but into os.devnull, to keep the
    table readable."""
    pl.seed_everything(cfg.seed, workers=True)
    timer = EpochTimer(profiler)
    datamodule, module, trainer = build_run(cfg, (timer,))
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        trainer.fit(module, datamodule=datamodule)
    return timer.seconds, timer.images


def timed(epoch, device: torch.device) -> tuple[float, int]:
    """One untimed warm-up epoch, then (seconds, training images) of a timed one."""
    epoch()
    sync(device)
    start = time.perf_counter()
    images = epoch()
    sync(device)
    return time.perf_counter() - start, images


def run_plain(cfg: DictConfig, datamodule, device: torch.device, batch: int, bf16: bool) -> tuple[float, int]:
    """(b): the floor, a warm-up epoch and a timed one (plain_epoch)."""
    return timed(plain_epoch(cfg, datamodule, device, batch, bf16), device)


def plain_epoch(cfg: DictConfig, datamodule, device: torch.device, batch: int, bf16: bool) -> Callable[[], int]:
    """One epoch of the plain loop and its validation pass; returns the images trained. No host read per step: the
    shuffle, the batches and the accuracy stay on the device. For segmentation (a CanvasDataModule), each batch is
    canvases composed on the device as the data module does, the validation its fixed canvases, the loss and the
    accuracy per labelled pixel."""
    torch.manual_seed(cfg.seed)
    net = build_config_network(OmegaConf.to_container(cfg.model, resolve=True)).to(device)
    if bf16:
        net.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optimizer, _partial_=True)(net.parameters())
    canvases = isinstance(datamodule, CanvasDataModule)
    train_x, train_y = (t.to(device) for t in datamodule.splits["train"])
    val_x, val_y = (t.to(device) for t in (datamodule.fixed["val"] if canvases else datamodule.splits["val"]))
    ignore = datamodule.ignore_index if canvases else -100  # -100: cross_entropy's default, no label is
    eval_batch, mean, std = cfg.data.eval_batch_size, cfg.data.mean, cfg.data.std
    # The run's own schedule (warmup included), stepped per batch as in a: a large batch's lr needs its warmup.
    steps_per_epoch = (datamodule.canvases["train"] if canvases else len(train_y)) // batch
    schedule = instantiate(cfg.scheduler)(optimizer, steps_per_epoch * cfg.trainer.max_epochs, steps_per_epoch)

    def normalize(images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255).sub_(mean).div_(std)

    def batches():
        if canvases:
            d = datamodule
            for _ in range(steps_per_epoch):
                yield compose(train_x, train_y, batch, d.canvas_size, d.min_digits, d.max_digits, d.ink_threshold,
                              d.ignore_index)
            return
        order = torch.randperm(len(train_y), device=device)  # the last partial batch dropped, as the data module
        for step in range(steps_per_epoch):
            index = order[step * batch : (step + 1) * batch]
            yield train_x[index], train_y[index]

    def epoch() -> int:
        net.train()
        for images, labels in batches():
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(normalize(images)), labels, ignore_index=ignore)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
        net.eval()
        correct = torch.zeros((), dtype=torch.long, device=device)
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            for start in range(0, len(val_y), eval_batch):
                labels = val_y[start : start + eval_batch]
                correct += ((net(normalize(val_x[start : start + eval_batch])).argmax(1) == labels)
                            & (labels != ignore)).sum()
        correct.item()  # the epoch's one host read, as a real loop reports its accuracy
        return steps_per_epoch * batch

    return epoch


def run_tutorial(cfg: DictConfig, root: Path, train_size: int, val_size: int,
                 device: torch.device) -> tuple[float, int]:
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

    def epoch() -> int:
        net.train()
        for data, target in train_loader:
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(net(data), target)
            loss.backward()
            optimizer.step()
        net.eval()
        test_loss = correct = 0  # summed with a host read per batch, as the example's test() does
        with torch.no_grad():
            for data, target in test_loader:
                data, target = data.to(device), target.to(device)
                output = net(data)
                test_loss += F.cross_entropy(output, target, reduction="sum").item()
                correct += output.argmax(1).eq(target).sum().item()
        return len(train_loader.dataset)

    return timed(epoch, device)


def machine(device: torch.device) -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none",
            "bf16": bf16_support(device.type) or "no", "device": str(device)}


def versions() -> dict:
    return {"python": platform.python_version(), **{name: metadata.version(name) for name in PACKAGES}}


def summarize(seconds: list[float], images: int, peaks: list[PeakMemory]) -> dict:
    median = statistics.median(seconds)
    return {"epoch_seconds": seconds, "epoch_seconds_median": median, "train_images": images,
            "train_images_per_second": images / median, "peak_memory_bytes": max(p.peak for p in peaks),
            "peak_memory_rise_bytes": max(p.rise for p in peaks)}


def table(results: dict, settings: dict) -> str:
    rows = ["| variant | what | batch | precision | epoch s, median (min-max) | train img/s | peak memory |",
            "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s, mib = r["epoch_seconds"], 2**20
        rows.append(f"| {name} | {VARIANTS[name]} | {settings[name]['batch']} | {settings[name]['precision']} | "
                    f"{r['epoch_seconds_median']:.2f} ({min(s):.2f}-{max(s):.2f}) | "
                    f"{r['train_images_per_second']:.0f} | {r['peak_memory_bytes'] / mib:.0f} MiB "
                    f"({r['peak_memory_rise_bytes'] / mib:+.0f}) |")
    return "\n".join(rows)


def ratios(results: dict) -> dict:
    speed = {name: r["train_images_per_second"] for name, r in results.items()}
    pairs = {key: key.split("/") for key in RATIOS}
    return {key: speed[top] / speed[bottom] for key, (top, bottom) in pairs.items() if {top, bottom} <= set(speed)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mnistlab-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, help="a folder with the four MNIST-style IDX files (plain or "
                        ".gz); default: synthetic data of MNIST's size (60000 train, 10000 test)")
    parser.add_argument("--train-images", type=int, help="use only the first N training images (default: all)")
    parser.add_argument("--val-size", type=int, help="validate on the last N of them (default: data.val_size)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per variant (default: 3)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch of b and a2 (default: 256)")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"],
                        help="precision of b and a2; bf16-mixed also means channels_last (default: bf16-mixed "
                        "where the device has bf16 instructions, else 32-true)")
    parser.add_argument("--variants", default="a,a2,b,c", help="comma-separated subset of a,a2,a2k1,b,c")
    parser.add_argument("--batch-sizes", help="comma-separated batch sizes, e.g. 64,128,256,512: a2 against b at "
                        "each, with the overhead per training step in ms (instead of --variants and --batch-size)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--profile", action="store_true",
                        help=f"afterwards, profile the timed epoch of a ({PROFILE_STEPS} steps) and print the top ops")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("overrides", nargs="*", help="train.py overrides for a and a2, e.g. callbacks=minimal")
    return parser.parse_args(argv)


def check(args: argparse.Namespace) -> tuple[list[str], torch.device]:
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ConfigError(f"--variants={args.variants}: choose from {', '.join(VARIANTS)}")
    if args.batch_sizes is not None:
        sizes = args.batch_sizes.split(",")
        if not all(size.isdigit() and int(size) >= 1 for size in sizes):
            raise ConfigError(f"--batch-sizes={args.batch_sizes}: give batch sizes >= 1 separated by commas, "
                              "e.g. 64,128,256,512")
        variants = ["a2", "b"]
    for option in ("train_images", "repeats", "batch_size", "val_size"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ConfigError(f"--{option.replace('_', '-')}={value} must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device=cuda, but torch sees no CUDA GPU")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    return variants, torch.device("cuda" if cuda else "cpu")


def benchmark(args: argparse.Namespace, folder: Path) -> dict:
    variants, device = check(args)
    torch.set_float32_matmul_precision("high")  # as mnistlab.train does; process-wide, so set for every variant
    precision = args.precision or ("bf16-mixed" if bf16_support(device.type) else "32-true")
    bf16 = precision == "bf16-mixed"

    def fast(batch: int) -> list[str]:  # a2 at b's settings
        return [f"data.batch_size={batch}", f"trainer.precision={precision}",
                f"tricks.channels_last={str(bf16).lower()}"]

    n_train = prepare_data(args.data_root, args.train_images, folder)

    base = compose_config(folder, args.val_size, device, folder / "runs", args.overrides)  # a, as users run it
    val_size = base.data.val_size
    if not 0 < val_size < n_train:
        raise ConfigError(f"data.val_size={val_size} must be between 1 and {n_train - 1} here: the benchmark "
                          "times epochs with validation (--val-size N sets it)")
    datamodule = instantiate(base.data)
    datamodule.setup()  # mnistlab's own checks of the files, and the splits b trains on
    trained = datamodule.canvases["train"] if isinstance(datamodule, CanvasDataModule) else n_train - val_size
    settings = {"a": {"batch": base.data.batch_size, "precision": base.trainer.precision},
                "a2": {"batch": args.batch_size, "precision": precision},
                "a2k1": {"batch": args.batch_size, "precision": precision},
                "b": {"batch": args.batch_size, "precision": precision},
                "c": {"batch": TUTORIAL_BATCH, "precision": "32-true"}}
    for name in ("a2", "a2k1", "b"):
        settings[name]["channels_last"] = bf16

    source = str(args.data_root) if args.data_root else "synthetic (mnistlab.data.synthetic)"
    header = {"machine": machine(device), "versions": versions(),
              "data": {"source": source, "train_images": trained, "val_images": val_size,
                       **({"unit": "canvases", "val_canvases": len(datamodule.fixed["val"][1])}
                          if isinstance(datamodule, CanvasDataModule) else {})},
              "method": {"repeats": args.repeats, "memory": memory_kind(device), "precision": precision,
                         "epoch": "one untimed warm-up epoch, then one timed epoch: training + its evaluation"}}

    def measure(name: str, repeat: int, batch: int = args.batch_size) -> tuple[float, int]:
        if name in ("a", "a2", "a2k1"):
            run_dir = folder / "runs" / f"{name}-{batch}-{repeat}"
            extra = (fast(batch) if name != "a" else []) + args.overrides
            one_step = ["data.steps_per_execution=1"] if name == "a2k1" else []  # Lightning's step per batch
            return run_lightning(compose_config(folder, args.val_size, device, run_dir, extra + one_step))
        if name == "b":
            return run_plain(base, datamodule, device, batch, bf16)
        return run_tutorial(base, folder, n_train - val_size, val_size, device)

    if args.batch_sizes is not None:
        sizes = [int(size) for size in args.batch_sizes.split(",")]
        sweep = {batch: {"a2": [], "a2k1": [], "b": []} for batch in sizes}
        for repeat in range(args.repeats):
            for batch in sizes:
                for name in ("a2", "a2k1", "b"):
                    epoch_seconds, _ = measure(name, repeat, batch)
                    sweep[batch][name].append(epoch_seconds)
                    print(f"repeat {repeat + 1}/{args.repeats}  batch {batch:<4} {name:<3} {epoch_seconds:7.2f} s",
                          flush=True)
        report_sweep = [overhead_row(batch, times, trained // batch) | {"steps_per_execution": groups(base, batch)}
                        for batch, times in sweep.items()]
        return header | {"batch_sweep": report_sweep}

    seconds, images, peaks = {v: [] for v in variants}, {}, {v: [] for v in variants}
    for repeat in range(args.repeats):
        for name in variants:
            with PeakMemory(device) as memory:
                epoch_seconds, images[name] = measure(name, repeat)
            seconds[name].append(epoch_seconds)
            peaks[name].append(memory)
            print(f"repeat {repeat + 1}/{args.repeats}  {name:<3} {epoch_seconds:7.2f} s", flush=True)
    results = {v: summarize(seconds[v], images[v], peaks[v]) for v in variants}
    report = header | {"settings": {v: settings[v] for v in variants}, "results": results,
                       "ratios": ratios(results)}
    if args.profile:
        limit = [f"trainer.limit_train_batches={PROFILE_STEPS}"]
        report["profile"] = profile(compose_config(folder, args.val_size, device, folder / "runs" / "profile",
                                                   args.overrides + limit))
    return report


def groups(cfg: DictConfig, batch: int) -> int:
    """The optimizer steps per Lightning step that a2 runs at `batch` (data.steps_per_execution)."""
    setting = cfg.data.steps_per_execution
    return auto_steps_per_execution(batch, torch.device(cfg.trainer.accelerator)) if setting == "auto" else setting


def overhead_row(batch: int, times: dict[str, list[float]], steps: int) -> dict:
    """a2 against b at one batch size: median epoch seconds, their ratio (b's time over a2's, as a speed ratio),
    and what mnistlab adds per training step, (a2 - b) / steps, in milliseconds; the same for a2 at one optimizer
    step per Lightning step (a2k1), where measured."""
    a2, b = statistics.median(times["a2"]), statistics.median(times["b"])
    row = {"batch": batch, "steps": steps, "a2_seconds": a2, "b_seconds": b, "a2/b": b / a2,
           "overhead_ms_per_step": 1000 * (a2 - b) / steps, "a2_all": times["a2"], "b_all": times["b"]}
    if times.get("a2k1"):
        k1 = statistics.median(times["a2k1"])
        row |= {"a2k1_seconds": k1, "a2k1/b": b / k1, "a2k1_overhead_ms_per_step": 1000 * (k1 - b) / steps,
                "a2k1_all": times["a2k1"]}
    return row


def sweep_table(rows: list[dict]) -> str:
    lines = ["| batch | steps | a2 epoch s | b epoch s | a2/b | overhead per step (ms) |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['batch']} | {row['steps']} | {row['a2_seconds']:.2f} | {row['b_seconds']:.2f} | "
                     f"{row['a2/b']:.2f} | {row['overhead_ms_per_step']:+.2f} |")
    return "\n".join(lines)


def one_step_table(rows: list[dict]) -> str:
    """a2's steps per Lightning step, and a2 at one (a2k1) against b."""
    lines = ["| batch | a2's steps per Lightning step | a2k1 epoch s | a2k1/b | a2k1 overhead per step (ms) |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['batch']} | {row['steps_per_execution']} | {row['a2k1_seconds']:.2f} | "
                     f"{row['a2k1/b']:.2f} | {row['a2k1_overhead_ms_per_step']:+.2f} |")
    return "\n".join(lines)


def profile(cfg: DictConfig) -> str:
    """torch.profiler over (a)'s timed epoch cut to PROFILE_STEPS steps: its validation and epoch end included."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available() and cfg.trainer.accelerator == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)
    run_lightning(cfg, profiler)
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)


# Below these, a ratio says more about start-up, per-epoch work and the machine's other load than about a step.
SHORT_EPOCH_SECONDS, STEADY_SPREAD, STEADY_REPEATS = 2.0, 0.10, 3


def caveats(report: dict) -> list[str]:
    """Why the ratios of this report may mean little: epochs too short, too few repeats, repeats that disagree."""
    notes, results = [], report["results"]
    shortest = min(r["epoch_seconds_median"] for r in results.values())
    if report["ratios"] and shortest < SHORT_EPOCH_SECONDS:
        notes.append(f"the shortest timed epoch took {shortest:.2f} s: per-epoch work (validation, checkpoints, "
                     "images) and noise weigh more than the steps; give more --train-images for per-step ratios")
    if report["ratios"] and report["method"]["repeats"] < STEADY_REPEATS:
        notes.append(f"{report['method']['repeats']} repeat(s): use --repeats {STEADY_REPEATS} or more before "
                     "trusting a ratio")
    for name, r in results.items():
        spread = (max(r["epoch_seconds"]) - min(r["epoch_seconds"])) / r["epoch_seconds_median"]
        if spread > STEADY_SPREAD:
            notes.append(f"the repeats of {name} spread {spread:.0%} of their median: the machine was busy, and the "
                         "ratios are uncertain by about that much")
    return notes


def print_report(report: dict) -> None:
    m, data, method = report["machine"], report["data"], report["method"]
    print(f"\nmachine   {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, GPU {m['gpu']}, "
          f"bf16 {m['bf16']}; device {m['device']}")
    print("versions  " + ", ".join(f"{name} {version}" for name, version in report["versions"].items()))
    if data.get("unit") == "canvases":
        print(f"data      canvases of {data['source']}'s digits: {data['train_images']} training canvases an epoch, "
              f"composed per batch; validation on {data['val_canvases']} fixed canvases")
    else:
        print(f"data      {data['source']}: {data['train_images']} training images, {data['val_images']} validation")
    print(f"method    repeats {method['repeats']}, variants interleaved; each: {method['epoch']}; "
          f"train img/s = training images / epoch seconds")
    print(f"memory    {method['memory']}")
    if "batch_sweep" in report:
        print(f"a2 ({VARIANTS['a2']}) against b ({VARIANTS['b']}), {method['precision']}, median epoch seconds;"
              " a2/b = b's epoch time over a2's (1.0: no overhead)\n")
        print(sweep_table(report["batch_sweep"]))
        print("\nthe same a2 at one optimizer step per Lightning step (a2k1: data.steps_per_execution=1):\n")
        print(one_step_table(report["batch_sweep"]))
        timed = {f"{name} at batch {row['batch']}": {"epoch_seconds": row[f"{name}_all"],
                                                      "epoch_seconds_median": row[f"{name}_seconds"]}
                 for row in report["batch_sweep"] for name in ("a2", "a2k1", "b")}
        for line in caveats({"results": timed, "ratios": {"a2/b": None}, "method": method}):
            print(f"note: {line}")
        return
    for name, s in report["settings"].items():
        print(f"  {name:<3} {VARIANTS[name]}: " + ", ".join(f"{key} {value}" for key, value in s.items()))
    print("\n" + table(report["results"], report["settings"]) + "\n")
    for key, value in report["ratios"].items():
        print(f"{key:<5} = {value:.2f}  (train img/s of {RATIOS[key]})")
    for line in caveats(report):
        print(f"note: {line}")
    if "profile" in report:
        print(f"\nprofile of a, {PROFILE_STEPS} training steps + validation + epoch end:\n{report['profile']}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)  # Lightning's per-fit banners and model summary
    try:
        with tempfile.TemporaryDirectory(prefix="mnistlab-bench-") as folder:
            report = benchmark(args, Path(folder))
    except MnistlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")

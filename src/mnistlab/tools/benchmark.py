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
import json
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
from importlib import metadata
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from mnistlab.build import build_datamodule
from mnistlab.config import compose_run_config
from mnistlab.data.files import ALL_FILES, SPLIT_FILES, TORCHVISION_DATASETS, find_idx_files
from mnistlab.data.idx import read_idx, write_idx
from mnistlab.data.synthetic import write_synthetic_dataset
from mnistlab.errors import ConfigError, DataError, MnistlabError
from mnistlab.execution import auto_steps_per_execution
from mnistlab.precision import bf16_support, cpu_model
from mnistlab.tools.loops import (
    TUTORIAL_BATCH,
    EpochTimer,
    InterleavedSteps,
    PlainLoop,
    Timing,
    run_lightning,
    run_plain,
    run_tutorial,
)
from mnistlab.validation import check_config

MNIST_SIZE = {"train": 60000, "test": 10000}  # the synthetic stand-in's size
VARIANTS = {"a": "mnistlab, defaults", "a2": "mnistlab, b's settings", "b": "plain loop (floor)",
            "c": "classic tutorial loop", "a2k1": "a2 at one optimizer step per Lightning step"}
RATIOS = {"a/c": "mnistlab as users run it over the classic tutorial loop",
          "a2/b": "mnistlab at b's settings over the plain-loop floor"}
PROFILE_STEPS = 50
STATUS = Path("/proc/self/status")
PACKAGES = ("torch", "torchvision", "pytorch-lightning", "hydra-core", "torchmetrics")


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
    datamodule = build_datamodule(base)
    datamodule.setup()  # mnistlab's own checks of the files, and the splits b trains on
    trained = datamodule.training_items()
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
                       "epoch": datamodule.epoch_description()},
              "method": {"repeats": args.repeats, "memory": memory_kind(device), "precision": precision,
                         "epoch": "one untimed warm-up epoch, then one timed epoch: training + its evaluation"}}

    def measure(name: str, repeat: int, batch: int = args.batch_size) -> Timing:
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
        sweep = {batch: {name: [] for name in ("a2", "a2k1", "b")} for batch in sizes}
        for repeat in range(args.repeats):
            for batch in sizes:
                for name in ("a2", "a2k1", "b"):
                    timing = measure(name, repeat, batch)
                    sweep[batch][name].append(timing)
                    print(f"repeat {repeat + 1}/{args.repeats}  batch {batch:<4} {name:<3} {timing.seconds:7.2f} s "
                          f"(steps {timing.step_seconds:.2f} s)", flush=True)
        interleaved = {}
        for batch in sizes:  # one more fit at each batch size: its timed epoch's steps, a2's and b's in turns
            pairs = InterleavedSteps(PlainLoop(base, datamodule, device, batch, bf16))
            run_lightning(compose_config(folder, args.val_size, device, folder / "runs" / f"interleaved-{batch}",
                                         fast(batch) + args.overrides), last=pairs)
            interleaved[batch] = interleaved_row(pairs.pairs)
            print(f"interleaved  batch {batch:<4} {interleaved[batch]['interleaved_groups']} groups, "
                  f"a2/b {paired_cell(interleaved[batch]['a2/b_interleaved'])}", flush=True)
        report_sweep = [overhead_row(batch, timings, trained // batch) | interleaved[batch]
                        | {"steps_per_execution": groups(base, batch)} for batch, timings in sweep.items()]
        return header | {"batch_sweep": report_sweep}

    seconds, images, peaks = {v: [] for v in variants}, {}, {v: [] for v in variants}
    for repeat in range(args.repeats):
        for name in variants:
            with PeakMemory(device) as memory:
                timing = measure(name, repeat)
            seconds[name].append(timing.seconds)
            images[name] = timing.images
            peaks[name].append(memory)
            print(f"repeat {repeat + 1}/{args.repeats}  {name:<3} {timing.seconds:7.2f} s", flush=True)
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


def paired(b: list[float], other: list[float]) -> dict:
    """b's time over the other's in each repeat, which measures them back to back: the median and the range. A
    neighbour's load that changes between repeats slows both of a pair alike, so their ratio keeps steadier than
    the ratio of two medians taken across repeats."""
    each = [b_seconds / seconds for b_seconds, seconds in zip(b, other, strict=True)]
    return {"median": statistics.median(each), "low": min(each), "high": max(each)}


def overhead_row(batch: int, timings: dict[str, list[Timing]], steps: int) -> dict:
    """a2 against b at one batch size: median epoch seconds, their ratio (b's time over a2's, as a speed ratio) and
    the paired ratio of each repeat, the paired ratio of their training steps alone, and what mnistlab adds per
    training step, (a2 - b) / steps, in milliseconds; the same for a2 at one optimizer step per Lightning step
    (a2k1), where measured."""
    times = {name: [t.seconds for t in runs] for name, runs in timings.items()}
    step_times = {name: [t.step_seconds for t in runs] for name, runs in timings.items()}
    a2, b = statistics.median(times["a2"]), statistics.median(times["b"])
    row = {"batch": batch, "steps": steps, "a2_seconds": a2, "b_seconds": b, "a2/b": b / a2,
           "a2/b_paired": paired(times["b"], times["a2"]),
           "a2/b_steps_paired": paired(step_times["b"], step_times["a2"]),
           "overhead_ms_per_step": 1000 * (a2 - b) / steps, "a2_all": times["a2"], "b_all": times["b"],
           "a2_steps_all": step_times["a2"], "b_steps_all": step_times["b"]}
    if times.get("a2k1"):
        k1 = statistics.median(times["a2k1"])
        row |= {"a2k1_seconds": k1, "a2k1/b": b / k1, "a2k1/b_paired": paired(times["b"], times["a2k1"]),
                "a2k1/b_steps_paired": paired(step_times["b"], step_times["a2k1"]),
                "a2k1_overhead_ms_per_step": 1000 * (k1 - b) / steps, "a2k1_all": times["a2k1"],
                "a2k1_steps_all": step_times["a2k1"]}
    return row


def interleaved_row(pairs: list[tuple[float, float, int]]) -> dict:
    """a2's groups of optimizer steps against as many plain-loop steps run right after each (InterleavedSteps):
    b's time over a2's, per group (median and range) and over the whole epoch."""
    a2, b, steps = (list(column) for column in zip(*pairs, strict=True))
    return {"a2/b_interleaved": paired(b, a2), "a2/b_interleaved_total": sum(b) / sum(a2),
            "interleaved_groups": len(pairs), "interleaved_steps": sum(steps), "interleaved_a2_all": a2,
            "interleaved_b_all": b}


def paired_cell(ratio: dict) -> str:
    return f"{ratio['median']:.2f} ({ratio['low']:.2f}-{ratio['high']:.2f})"


def sweep_table(rows: list[dict]) -> str:
    lines = ["| batch | steps | a2 epoch s | b epoch s | a2/b | overhead per step (ms) | paired a2/b (range) | "
             "steps alone, paired a2/b (range) | steps interleaved a2/b (range) |", "|---" * 9 + "|"]
    for row in rows:
        lines.append(f"| {row['batch']} | {row['steps']} | {row['a2_seconds']:.2f} | {row['b_seconds']:.2f} | "
                     f"{row['a2/b']:.2f} | {row['overhead_ms_per_step']:+.2f} | {paired_cell(row['a2/b_paired'])} | "
                     f"{paired_cell(row['a2/b_steps_paired'])} | {paired_cell(row['a2/b_interleaved'])} |")
    return "\n".join(lines)


def one_step_table(rows: list[dict]) -> str:
    """a2's steps per Lightning step, and a2 at one (a2k1) against b."""
    lines = ["| batch | a2's steps per Lightning step | a2k1 epoch s | a2k1/b | a2k1 overhead per step (ms) | "
             "paired a2k1/b (range) | steps alone, paired a2k1/b (range) |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['batch']} | {row['steps_per_execution']} | {row['a2k1_seconds']:.2f} | "
                     f"{row['a2k1/b']:.2f} | {row['a2k1_overhead_ms_per_step']:+.2f} | "
                     f"{paired_cell(row['a2k1/b_paired'])} | {paired_cell(row['a2k1/b_steps_paired'])} |")
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
    print(f"data      {data['source']}: {data['epoch']}")
    print(f"method    repeats {method['repeats']}, variants interleaved; each: {method['epoch']}; "
          f"train img/s = training images / epoch seconds")
    print(f"memory    {method['memory']}")
    if "batch_sweep" in report:
        print(f"a2 ({VARIANTS['a2']}) against b ({VARIANTS['b']}), {method['precision']}, median epoch seconds;"
              " a2/b = b's epoch time over a2's (1.0: no overhead); paired: the median and range of that ratio"
              " within each repeat, which times a2, a2k1 and b back to back; steps alone: the same ratio of the"
              " epoch's training steps, without its validation and epoch-end work; steps interleaved: one more fit"
              " whose timed epoch runs as many plain-loop steps after each of its Lightning steps, b's time over"
              " a2's per group (median and range), the framework's cost per step with the least of a busy"
              " machine's drift\n")
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

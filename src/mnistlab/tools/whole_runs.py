"""Whole `python train.py` runs against a plain PyTorch loop, as a user times them: each a fresh process, the
marginal epoch being half the difference between a 3-epoch and a 1-epoch run (start-up, the first epoch's
warm-up, the test and the shutdown cancel out), at the same data, batch and precision.

    python -m mnistlab.tools.whole_runs --data-root /usr/share/datasets/fashion-mnist --batch-sizes 64,128

The plain loop (mnistlab-bench's b: the same network, optimizer, schedule, device-resident batches and a
validation pass per epoch) also runs as a fresh process. Runs are interleaved; medians over --repeats.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mnistlab.build import build_datamodule
from mnistlab.config import compose_run_config
from mnistlab.tools.loops import PlainLoop, sync

REPO = Path(__file__).resolve().parents[3]
EPOCHS = (1, 3)


def mnistlab_command(data: list[str], batch: int, precision: str, epochs: int, folder: str) -> list[str]:
    return [sys.executable, "train.py", *data, f"data.batch_size={batch}", f"trainer.precision={precision}",
            f"trainer.max_epochs={epochs}", f"hydra.run.dir={folder}"]


def plain_command(data: list[str], batch: int, precision: str, epochs: int) -> list[str]:
    return [sys.executable, "-m", "mnistlab.tools.whole_runs", "--plain", str(epochs), "--batch-sizes", str(batch),
            "--precision", precision, *data]


def wall_seconds(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def run_plain_process(overrides: list[str], batch: int, precision: str, epochs: int) -> None:
    """The plain loop for `epochs` epochs on the data train.py would read with `overrides`."""
    cfg = compose_run_config([*overrides, f"data.batch_size={batch}", "trainer.max_epochs=3"])
    torch.set_float32_matmul_precision("high")
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    bf16 = precision == "bf16-mixed"
    plain = PlainLoop(cfg, datamodule, torch.device("cpu"), batch, bf16)
    for _ in range(epochs):
        plain.epoch()
    sync(torch.device("cpu"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", help="data.root for both (default: the config's)")
    parser.add_argument("--data", default="fashion_mnist", help="the data config (default: fashion_mnist)")
    parser.add_argument("--batch-sizes", default="64,128")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain", type=int, metavar="EPOCHS", help=argparse.SUPPRESS)  # the plain loop's process
    parser.add_argument("overrides", nargs="*", help="train.py overrides for both, e.g. data.val_size=5000")
    args = parser.parse_args(argv)
    data = [f"data={args.data}", *([f"data.root={args.data_root}", "data.download=false"] if args.data_root else []),
            *args.overrides]
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    if args.plain is not None:
        run_plain_process(data, sizes[0], args.precision, args.plain)
        return
    print(f"whole runs, marginal epoch = (3-epoch run - 1-epoch run) / 2, {args.precision}, median of "
          f"{args.repeats}; ratio = plain's marginal epoch over mnistlab's (1.0: no overhead)\n")
    print("| batch | mnistlab epoch s | plain epoch s | ratio | mnistlab 1-epoch run s | plain 1-epoch run s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="mnistlab-whole-") as folder:
        for batch in sizes:
            times = {(kind, epochs): [] for kind in ("mnistlab", "plain") for epochs in EPOCHS}
            for repeat in range(args.repeats):
                for epochs in EPOCHS:
                    run_dir = f"{folder}/b{batch}r{repeat}e{epochs}"
                    times["mnistlab", epochs].append(
                        wall_seconds(mnistlab_command(data, batch, args.precision, epochs, run_dir)))
                    times["plain", epochs].append(wall_seconds(plain_command(data, batch, args.precision, epochs)))
            marginal = {kind: statistics.median((three - one) / 2 for one, three in
                                                zip(times[kind, 1], times[kind, 3], strict=True))
                        for kind in ("mnistlab", "plain")}
            print(f"| {batch} | {marginal['mnistlab']:.2f} | {marginal['plain']:.2f} | "
                  f"{marginal['plain'] / marginal['mnistlab']:.2f} | {statistics.median(times['mnistlab', 1]):.1f} | "
                  f"{statistics.median(times['plain', 1]):.1f} |", flush=True)


if __name__ == "__main__":
    main()

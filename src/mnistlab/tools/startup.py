"""How long `python train.py` takes around its training: from the command to the first training step, and from the
last training step to the prompt, beside `python -c "import torch"` on the same machine.

    python -m mnistlab.tools.startup --repeats 3 data=fashion_mnist data.root=/usr/share/datasets/fashion-mnist

Each repeat runs the real command in a fresh process with a callback (Timeline) that writes the wall-clock time
of the first and the last training step; the process's own start and end are taken here.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl

REPO = Path(__file__).resolve().parents[3]


class Timeline(pl.Callback):
    """Writes {"first_step": t, "last_step": t} (time.time()) to `path`: the start of the first training step and
    the end of the last."""

    def __init__(self, path: str):
        self.path, self.times = Path(path), {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.times.setdefault("first_step", time.time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.times["last_step"] = time.time()

    def on_train_end(self, trainer, pl_module) -> None:
        self.path.write_text(json.dumps(self.times))


def timed_run(command: list[str], cwd: Path) -> tuple[float, float]:
    started = time.time()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    ended = time.time()
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return started, ended


def measure(overrides: list[str], repeats: int) -> dict:
    rows = {"import torch": [], "command to first step": [], "last step to prompt": [], "whole command": []}
    with tempfile.TemporaryDirectory(prefix="mnistlab-startup-") as folder:
        for repeat in range(repeats):
            started, ended = timed_run([sys.executable, "-c", "import torch"], REPO)
            rows["import torch"].append(ended - started)
            times = Path(folder) / f"times{repeat}.json"
            run = [sys.executable, "train.py", *overrides, f"hydra.run.dir={folder}/run{repeat}",
                   "+callbacks.timeline._target_=mnistlab.tools.startup.Timeline", f"+callbacks.timeline.path={times}"]
            started, ended = timed_run(run, REPO)
            steps = json.loads(times.read_text())
            rows["command to first step"].append(steps["first_step"] - started)
            rows["last step to prompt"].append(ended - steps["last_step"])
            rows["whole command"].append(ended - started)
            print(f"repeat {repeat + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rows.items()),
                  flush=True)
    return {name: {"median": statistics.median(values), "all": values} for name, values in rows.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mnistlab.tools.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. data=fashion_mnist trainer.max_epochs=1")
    args = parser.parse_args(argv)
    overrides = args.overrides or ["trainer.max_epochs=1"]
    results = measure(overrides, args.repeats)
    print(f"\n`python train.py {' '.join(overrides)}`, median of {args.repeats} (seconds)\n")
    print("| phase | median s | all |\n|---|---|---|")
    for name, row in results.items():
        print(f"| {name} | {row['median']:.2f} | {', '.join(f'{v:.2f}' for v in row['all'])} |")


if __name__ == "__main__":
    main()

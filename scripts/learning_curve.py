"""Test accuracy against the number of training images, in one command: one multirun over data.train_size and
seeds (validation and test sets stay the same), then the report and a plot of min / median / max per size.

    python scripts/learning_curve.py --sizes 5000,10000,20000,55000 --seeds 5 -- data=fashion_mnist \\
        data.root=/usr/share/datasets/fashion-mnist trainer.max_epochs=3 callbacks=minimal

Everything after `--` is passed to every job (an experiment too: `+experiment=bag_of_tricks`). The sweep goes to
logs/learning_curve/<date>_<time>/ (or --out), with report.md, learning_curve.md and learning_curve.png in it.
Jobs run one at a time; add `hydra/launcher=joblib hydra.launcher.n_jobs=2` to run two (OMP_NUM_THREADS=1 each
on a CPU).
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mnistlab.sweep_results import collect  # noqa: E402  (after the path: works before `pip install -e .` too)


def curve(sweep: Path) -> list[tuple[str, list[float], int]]:
    """(train_size, test accuracies in %, failed jobs) per size, in the order the sizes were given."""
    sizes: dict[str, tuple[list[float], list[int]]] = {}
    for job in collect(sweep):
        accuracies, failed = sizes.setdefault(job.overrides.get("data.train_size", "all"), ([], [0]))
        if job.metrics is None:
            failed[0] += 1
        else:
            accuracies.append(100 * job.metrics["test/acc"])
    return [(size, accuracies, failed[0]) for size, (accuracies, failed) in sizes.items()]


def table(points: list[tuple[str, list[float], int]]) -> str:
    lines = ["| training images | runs | failed | test accuracy min / median / max (%) | mean ± std (%) |",
             "|---|---|---|---|---|"]
    for size, accuracies, failed in points:
        if accuracies:
            spread = f"{min(accuracies):.2f} / {statistics.median(accuracies):.2f} / {max(accuracies):.2f}"
            std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
            mean = f"{statistics.mean(accuracies):.2f} ± {std:.2f}"
        else:
            spread = mean = "-"
        lines.append(f"| {size} | {len(accuracies)} | {failed} | {spread} | {mean} |")
    return "\n".join(lines) + "\n"


def plot(points: list[tuple[str, list[float], int]], path: Path) -> None:
    import matplotlib.pyplot as plt

    shown = [(int(size), accuracies) for size, accuracies, _ in points if accuracies and size.isdigit()]
    if not shown:
        return
    sizes = [size for size, _ in shown]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.fill_between(sizes, [min(a) for _, a in shown], [max(a) for _, a in shown], alpha=0.25, label="min-max")
    axes.plot(sizes, [statistics.median(a) for _, a in shown], "o-", label="median")
    axes.set_xscale("log")
    axes.set_xlabel("training images")
    axes.set_ylabel("test accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", required=True, help="comma-separated training set sizes, e.g. 5000,10000")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per size (1..N)")
    parser.add_argument("--out", type=Path, help="sweep folder (default logs/learning_curve/<date>_<time>)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job (after --)")
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if not sizes or not all(s.isdigit() and int(s) > 0 for s in sizes):
        parser.error(f"--sizes={args.sizes}: give positive integers separated by commas")
    if args.seeds < 1:
        parser.error(f"--seeds={args.seeds} must be at least 1")
    out = args.out or REPO / "logs" / "learning_curve" / time.strftime("%Y-%m-%d_%H-%M-%S")
    seeds = ",".join(str(seed) for seed in range(1, args.seeds + 1))
    command = [sys.executable, str(REPO / "train.py"), "-m", f"data.train_size={','.join(sizes)}", f"seed={seeds}",
               f"hydra.sweep.dir={out}", *args.overrides]
    print(" ".join(command), flush=True)
    sweep = subprocess.run(command, cwd=REPO)
    report = subprocess.run([sys.executable, "-m", "mnistlab.tools.report", str(out)], cwd=REPO, capture_output=True)
    points = curve(out)
    text = table(points)
    (out / "learning_curve.md").write_text(text)
    plot(points, out / "learning_curve.png")
    print(text + f"\nwritten: {out / 'learning_curve.md'}, {out / 'learning_curve.png'}, {out / 'report.md'}")
    sys.exit(sweep.returncode or report.returncode)


if __name__ == "__main__":
    main()

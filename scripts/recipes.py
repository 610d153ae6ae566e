"""Do the recipes hold at every budget? baseline, bag_of_tricks and bag_of_tricks without its EMA, over N seeds, at
each number of epochs given, on one dataset: one multirun per recipe and budget, then one table.

    python scripts/recipes.py --epochs 3,8,30 --seeds 3 -- data=fashion_mnist \\
        data.root=/usr/share/datasets/fashion-mnist hydra/launcher=joblib hydra.launcher.n_jobs=2

Everything after `--` is passed to every job. The inspection callbacks are left out (callbacks=minimal, plus the
EMA where the recipe has one): they cost time, not accuracy. Sweeps go to logs/recipes/<date>_<time>/ (or --out),
the table to recipes.md there. A run that the "not learning" stop ends counts as failed in the table.
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mnistlab.config import stated_settings  # noqa: E402  (after the path: works before `pip install -e .` too)
from mnistlab.sweep_results import collect  # noqa: E402

# The EMA as configs/callbacks/ema.yaml states it, added to callbacks=minimal.
EMA = "+callbacks.ema={" + ", ".join(
    f"{key}: {value}" for key, value in stated_settings("callbacks.ema", ("callbacks=ema",)).items()) + "}"
RECIPES = {  # name: the overrides of its jobs
    "baseline": ["+experiment=baseline", "callbacks=minimal"],
    "bag_of_tricks": ["+experiment=bag_of_tricks", "callbacks=minimal", EMA],
    "bag_of_tricks without EMA": ["+experiment=bag_of_tricks", "callbacks=minimal"],
}


def accuracies(sweep: Path) -> tuple[list[float], int]:
    """(test accuracies in %, failed jobs) of one sweep."""
    jobs = collect(sweep)
    done = [100 * job.metrics["test/acc"] for job in jobs if job.metrics is not None]
    return done, len(jobs) - len(done)


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def table(results: dict[tuple[int, str], tuple[list[float], int]], epochs: list[int]) -> str:
    lines = ["| epochs | " + " | ".join(RECIPES) + " | bag - baseline | EMA - no EMA | failed |",
             "|---|" + "---|" * (len(RECIPES) + 3)]
    for budget in epochs:
        row = {name: results[budget, name][0] for name in RECIPES}
        failed = sum(results[budget, name][1] for name in RECIPES)
        means = {name: statistics.mean(values) if values else float("nan") for name, values in row.items()}
        bag_gain = means["bag_of_tricks"] - means["baseline"]
        ema_gain = means["bag_of_tricks"] - means["bag_of_tricks without EMA"]
        lines.append(f"| {budget} | " + " | ".join(cell(row[name]) for name in RECIPES)
                     + f" | {bag_gain:+.2f} | {ema_gain:+.2f} | {failed} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", default="3,8,30", help="comma-separated budgets in epochs")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per recipe and budget (1..N)")
    parser.add_argument("--out", type=Path, help="folder of the sweeps (default logs/recipes/<date>_<time>)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job (after --)")
    args = parser.parse_args()
    try:
        epochs = [int(e) for e in args.epochs.split(",")]
    except ValueError:
        parser.error(f"--epochs={args.epochs}: give whole numbers separated by commas")
    if args.seeds < 1 or not epochs or min(epochs) < 1:
        parser.error("--seeds and every budget in --epochs must be at least 1")
    out = args.out or REPO / "logs" / "recipes" / time.strftime("%Y-%m-%d_%H-%M-%S")
    seeds = ",".join(str(seed) for seed in range(1, args.seeds + 1))
    results, status = {}, 0
    for budget in epochs:
        for index, (name, recipe) in enumerate(RECIPES.items()):
            sweep = out / f"{budget}ep_{index}"
            command = [sys.executable, str(REPO / "train.py"), "-m", *recipe, f"trainer.max_epochs={budget}",
                       f"seed={seeds}", f"hydra.sweep.dir={sweep}", *args.overrides]
            print(" ".join(command), flush=True)
            status = status or subprocess.run(command, cwd=REPO).returncode
            results[budget, name] = accuracies(sweep)
    text = table(results, epochs)
    (out / "recipes.md").write_text(text)
    print(f"\n{text}\nwritten: {out / 'recipes.md'}")
    sys.exit(status)


if __name__ == "__main__":
    main()

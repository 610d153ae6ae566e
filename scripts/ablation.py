"""The bag-of-tricks ablation in one command, like the paper's table: the baseline, each trick of
bag_of_tricks alone, then all of them together, over N seeds, ending with the report (Markdown, CSV, PNG).

    python scripts/ablation.py --seeds 3 -- data=fashion_mnist data.root=/usr/share/datasets/fashion-mnist \\
        trainer.max_epochs=5

Everything after `--` is passed to every job. The sweep goes to logs/ablation/<date>_<time>/ (or --out).
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# baseline, then the experiments that bag_of_tricks combines (configs/experiment/), then the combination.
EXPERIMENTS = ["baseline", "bn", "cosine", "warmup", "label_smoothing", "no_bias_decay", "ema", "amp",
               "bag_of_tricks"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per experiment (1..N)")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS), help="comma-separated experiment names")
    parser.add_argument("--out", type=Path, help="sweep folder (default logs/ablation/<date>_<time>)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job (after --)")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds={args.seeds} must be at least 1")
    out = args.out or REPO / "logs" / "ablation" / time.strftime("%Y-%m-%d_%H-%M-%S")
    seeds = ",".join(str(seed) for seed in range(1, args.seeds + 1))
    command = [sys.executable, str(REPO / "train.py"), "-m", f"+experiment={args.experiments}", f"seed={seeds}",
               f"hydra.sweep.dir={out}", *args.overrides]
    print(" ".join(command), flush=True)
    sweep = subprocess.run(command, cwd=REPO)
    report = subprocess.run([sys.executable, "-m", "mnistlab.tools.report", str(out)], cwd=REPO)
    sys.exit(sweep.returncode or report.returncode)


if __name__ == "__main__":
    main()

"""Collect the metrics.json of every job of a multirun into one Markdown table, grouped by run name.

    mnistlab-report logs/<name>/multiruns/<date>_<time>
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml


def collect(sweep_dir: Path) -> dict[str, list[dict]]:
    """{run name: [metrics of each finished job]}, in job order."""
    groups: dict[str, list[dict]] = {}
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        name = yaml.safe_load((metrics_file.parent / ".hydra" / "config.yaml").read_text())["name"]
        groups.setdefault(name, []).append(json.loads(metrics_file.read_text()))
    return groups


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def markdown_table(groups: dict[str, list[dict]]) -> str:
    lines = ["| experiment | runs | test accuracy (%) | best val accuracy (%) | time per epoch (s) |",
             "|---|---|---|---|---|"]
    for name, runs in groups.items():
        lines.append(f"| {name} | {len(runs)} | {mean_std([100 * r['test/acc'] for r in runs])} | "
                     f"{mean_std([100 * r['val/acc_best'] for r in runs])} | "
                     f"{statistics.mean(r['seconds_per_epoch'] for r in runs):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun folder (one subfolder per job)")
    args = parser.parse_args()
    groups = collect(args.sweep_dir)
    if not groups:
        print(f"error: no */metrics.json under {args.sweep_dir}: is it a multirun folder?", file=sys.stderr)
        sys.exit(2)
    print(markdown_table(groups))


if __name__ == "__main__":
    main()

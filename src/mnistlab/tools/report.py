"""One table for a sweep instead of forty folders: every job's metrics.json (or failure.json) and overrides,
grouped by the overrides that differ between jobs (seed aside: seeds are what the mean and std run over),
written as Markdown, CSV and a PNG chart of test accuracy (mean and spread); failed jobs are listed with their error.
report.html puts all of it on one self-contained page, with every job's validation curves (report_html.py).

    mnistlab-report logs/<name>/multiruns/<date>_<time> [--out DIR]
"""

import argparse
import csv
import json
import sys
import warnings
from pathlib import Path

from mnistlab.sweep_results import (
    Job,
    collect,
    columns,
    rows,
    short_number,
    text_table,
)
from mnistlab.tools.report_html import write_html


def markdown(keys: list[str], table: list[dict], jobs: list[Job], metrics: list[tuple[str, str, float]]) -> str:
    header, *body = text_table(keys, table, metrics)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    failures = [job for job in jobs if job.metrics is None]
    if failures:
        lines += ["", "Failed and pruned jobs:"]
        for job in failures:
            settings = " ".join(f"{key}={job.overrides.get(key, '-')}" for key in keys)
            lines.append(f"- job {job.folder.name} ({settings or 'no varying override'}): {job.error}")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, keys: list[str], table: list[dict], metrics: list[tuple[str, str, float]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*keys, "runs", "failed", *(f"{m}_{part}" for m, _, _ in metrics for part in ("mean", "std"))])
        for row in table:
            numbers = []
            for metric, _, _ in metrics:
                mean, std = row[metric] if row[metric] else (None, None)
                numbers += ["" if mean is None else f"{mean:.6g}", "" if std is None else f"{std:.6g}"]
            writer.writerow([*(row[key] for key in keys), row["runs"], row["failed"], *numbers])


def write_chart(path: Path, keys: list[str], table: list[dict], headline: tuple[str, str, float]) -> None:
    """The mean headline metric of each group as a dot with the std over seeds as its error bar. Dots, not bars: the
    axis is zoomed to where the groups differ, and a bar's length would then exaggerate the differences."""
    import matplotlib.pyplot as plt  # only the chart needs it

    metric, title, _ = headline
    shown = [row for row in table if row[metric] is not None]
    labels = [", ".join(f"{key}={row[key]}" for key in keys) or "all" for row in shown]
    means = [row[metric][0] for row in shown]
    errors = [row[metric][1] or 0.0 for row in shown]
    figure, axes = plt.subplots(figsize=(6.0 + 0.065 * max(map(len, labels), default=0), 1.2 + 0.4 * len(shown)))
    axes.errorbar(means, range(len(shown)), xerr=errors, fmt="o", capsize=4, color="steelblue")
    axes.grid(axis="x", alpha=0.3)
    axes.set_yticks(range(len(shown)), labels, fontsize=8)
    axes.invert_yaxis()  # first group on top, as in the table
    axes.set_xlabel(f"{title}, mean ± std over seeds")
    if means:
        low = min(m - e for m, e in zip(means, errors, strict=True))
        axes.set_xlim(max(0.0, low - 1.0), min(100.0, max(m + e for m, e in zip(means, errors, strict=True)) + 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def study_view(sweep_dir: Path) -> str:
    """For an Optuna search (hparams_search=optuna): the study's best trial, its trials by state, and Optuna's
    optimization history, parameter importances and parallel coordinates as PNG files in the sweep folder."""
    where = sweep_dir / "optuna_study.json"  # written by the sweeper when the search starts
    if not where.is_file():
        return ""
    import matplotlib.pyplot as plt
    import optuna

    saved = json.loads(where.read_text())
    url = saved["storage"]
    study = optuna.load_study(study_name=saved["study_name"], storage=url)
    trials = study.get_trials(deepcopy=False)
    states = {state.name.lower(): sum(t.state == state for t in trials) for state in optuna.trial.TrialState}
    lines = ["", f"Optuna study {study.study_name!r} ({url}): " +
             ", ".join(f"{count} {state}" for state, count in states.items() if count)]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        lines.append(f"best: trial {best.number}, value {best.value:.4f}, " +
                     " ".join(f"{key}={short_number(str(value))}" for key, value in best.params.items()))
        plots = {"optuna_history.png": optuna.visualization.matplotlib.plot_optimization_history,
                 "optuna_parallel_coordinate.png": optuna.visualization.matplotlib.plot_parallel_coordinate}
        if len(complete) > 1 and best.params:
            plots["optuna_importances.png"] = optuna.visualization.matplotlib.plot_param_importances
        for name, plot in plots.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    plot(study).figure.savefig(sweep_dir / name, dpi=120, bbox_inches="tight")
                except (ValueError, RuntimeError) as err:  # too few trials of a kind for this plot
                    lines.append(f"{name}: not drawn ({err})")
            plt.close("all")
            # Optuna calls its plots experimental (nothing to act on); anything else, as one line of the report.
            experimental = optuna.exceptions.ExperimentalWarning
            notes = {str(w.message) for w in caught if not issubclass(w.category, experimental)}
            lines += [f"{name}: {note}" for note in sorted(notes)]
        lines.append("plots: " + ", ".join(name for name in plots if (sweep_dir / name).is_file()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun folder (one subfolder per job)")
    parser.add_argument("--out", type=Path, help="where report.md, .csv, .png and .html go (default: sweep_dir)")
    args = parser.parse_args(argv)
    jobs = collect(args.sweep_dir)
    if not jobs:
        print(f"error: no job folders (*/.hydra/overrides.yaml) under {args.sweep_dir}: is it a multirun folder?",
              file=sys.stderr)
        sys.exit(2)
    metrics = columns(jobs)
    keys, table = rows(jobs, metrics)
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    study = study_view(args.sweep_dir)
    text = markdown(keys, table, jobs, metrics) + study
    (out / "report.md").write_text(text)
    write_csv(out / "report.csv", keys, table, metrics)
    write_chart(out / "report.png", keys, table, metrics[0])
    write_html(out / "report.html", args.sweep_dir, jobs, metrics, study)
    print(text + f"\nwritten: {out / 'report.md'}, {out / 'report.csv'}, {out / 'report.png'}, {out / 'report.html'}")


if __name__ == "__main__":
    main()

"""One table for a sweep instead of forty folders: every job's metrics.json (or failure.json) and overrides,
grouped by the overrides that differ between jobs (seed aside: seeds are what the mean and std run over),
written as Markdown, CSV and a PNG chart of test accuracy (mean and spread); failed jobs are listed with their error.
report.html puts all of it on one self-contained page, with every job's validation curves (report_html.py).

    mnistlab-report logs/<name>/multiruns/<date>_<time> [--out DIR]
"""

import argparse
import csv
import json
import math
import statistics
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

IGNORED_KEYS = ("seed",)  # averaged over, never a column
# The metric names of sweeps whose jobs' configs predate the task group (configs/task/classification.yaml).
CLASSIFICATION = {"monitor": "val/acc", "best": "val/acc_best", "test": ["test/acc", "test/loss"]}


def task_metrics(jobs: list["Job"]) -> dict:
    """The task's metric names (monitor, best, test) from the config the jobs ran with."""
    config = jobs[0].folder / ".hydra" / "config.yaml" if jobs else None
    saved = yaml.safe_load(config.read_text()) if config and config.is_file() else {}
    return (saved.get("task") or {}).get("metrics") or CLASSIFICATION


def display_scale(metric: str) -> float:
    """Losses stay as they are, every other metric (accuracy, IoU) is shown in percent."""
    return 1 if metric.endswith("loss") else 100


def columns(jobs: list["Job"]) -> list[tuple[str, str, float]]:
    """(metric, column title, scale) of the table: the task's headline test metric, its best validation value, the
    other test metrics, the time per epoch."""
    names = task_metrics(jobs)
    headline, *others = names["test"]
    return [(name, f"{name}{'' if display_scale(name) == 1 else ' (%)'}", display_scale(name))
            for name in (headline, names["best"], *others)] + [("seconds_per_epoch", "time per epoch (s)", 1)]


@dataclass
class Job:
    folder: Path
    overrides: dict[str, str]
    metrics: dict | None  # None when the job failed or never finished
    error: str | None
    status: str  # finished, failed, pruned or unfinished


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """["+experiment=mixup", "optimizer.lr=0.0123456"] -> {"experiment": "mixup", "optimizer.lr": "0.01235"}
    (hydra.* settings left out, numbers shortened to 4 significant digits)."""
    pairs = {}
    for line in lines:
        key, _, value = line.partition("=")
        key = key.lstrip("+~")
        if not key.startswith("hydra."):
            pairs[key] = short_number(value)
    return pairs


def short_number(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "e" not in value.lower() else f"{number:.4g}"


def read_record(path: Path) -> dict | None:
    """A job's metrics.json, failure.json or pruned.json; None where there is none, or one that cannot be read
    (cut off as it was written): a job whose metrics.json is that is listed as unfinished."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def collect(sweep_dir: Path) -> list[Job]:
    """Every job folder of a Hydra sweep (those holding .hydra/overrides.yaml), in job order."""
    folders = sorted((p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")),
                     key=lambda p: (len(p.name), p.name))
    jobs = []
    for folder in folders:
        overrides = parse_overrides(yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or [])
        metrics, failure, pruned = (read_record(folder / name) for name in ("metrics.json", "failure.json",
                                                                             "pruned.json"))
        if metrics is not None:
            jobs.append(Job(folder, overrides, metrics, None, "finished"))
        elif pruned is not None:
            why = f"pruned by the Optuna pruner after epoch {pruned.get('epoch', '?')}"
            jobs.append(Job(folder, overrides, None, why, "pruned"))
        elif failure is not None:
            jobs.append(Job(folder, overrides, None, str(failure.get("error", "failed")), "failed"))
        else:
            jobs.append(Job(folder, overrides, None, "no metrics.json: killed, or still running", "unfinished"))
    return jobs


def varying_keys(jobs: list[Job], ignored: tuple[str, ...] = IGNORED_KEYS) -> list[str]:
    """The override keys whose values differ between jobs (the ignored ones aside: by default the seed), in the
    order they were given."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    return [key for key in keys if key not in ignored
            and len({job.overrides.get(key) for job in jobs}) > 1]


def group(jobs: list[Job]) -> tuple[list[str], dict[tuple[str, ...], list[Job]]]:
    """(varying keys, {their values: jobs}) with the groups in order of first appearance."""
    keys = varying_keys(jobs)
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.overrides.get(key, "-") for key in keys), []).append(job)
    return keys, groups


def summarise(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation or None for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def rows(jobs: list[Job], metrics: list[tuple[str, str, float]]) -> tuple[list[str], list[dict]]:
    """(varying keys, one dict per group: its key values, run counts, and (mean, std) of each metric)."""
    keys, groups = group(jobs)
    table = []
    for values, members in groups.items():
        finished = [job.metrics for job in members if job.metrics is not None]
        row = dict(zip(keys, values, strict=True), runs=len(finished), failed=len(members) - len(finished))
        for metric, _, scale in metrics:
            # the best validation value is null (NaN in older runs) for a run without a validation split
            numbers = [scale * m[metric] for m in finished
                       if isinstance(m.get(metric), (int, float)) and math.isfinite(m[metric])]
            row[metric] = summarise(numbers) if numbers else None
        table.append(row)
    return keys, table


def cell(summary: tuple[float, float | None] | None, digits: int) -> str:
    if summary is None:
        return "-"
    mean, std = summary
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def decimals(metric: str, scale: float) -> int:
    """Losses get three decimals, percentages and seconds two."""
    return 3 if scale == 1 and metric != "seconds_per_epoch" else 2


def text_table(keys: list[str], table: list[dict], metrics: list[tuple[str, str, float]]) -> list[list[str]]:
    """The table as text cells, its header first: what report.md and report.html both show."""
    header = [*(keys or ["jobs"]), "runs", "failed", *(title for _, title, _ in metrics)]
    body = [[*([row[key] for key in keys] or ["all"]), str(row["runs"]), str(row["failed"]),
             *(cell(row[metric], decimals(metric, scale)) for metric, _, scale in metrics)] for row in table]
    return [header, *body]


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
    from mnistlab.tools.report_html import write_html  # here, not at the top: report_html imports this module

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

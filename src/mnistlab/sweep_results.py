"""A sweep folder read back: each job's overrides and its record (metrics.json, or failure.json), grouped by the
overrides that differ between jobs, with the mean and spread over seeds: what mnistlab-report writes, what its
report.html shows, and what a continued sweep (sweep_plan.py) finds done."""

import json
import math
import statistics
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

"""report.html: the sweep report on one page that opens from a file, offline: the table of report.md, the settings
of every job, their validation curves read back from their TensorBoard events, failed and pruned jobs, and an
Optuna search's plots. Images are inline PNGs; every text from the sweep folder is escaped, since overrides and
error messages are whatever the user typed or the job raised."""

import base64
import io
from html import escape
from pathlib import Path

from mnistlab.sweep_results import Job, decimals, display_scale, rows, task_metrics, text_table, varying_keys

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f0f0; }
tr.failed td, tr.unfinished td { color: #b00020; } tr.pruned td { color: #a06000; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
pre { background: #f6f6f6; padding: 0.6em; white-space: pre-wrap; }
"""


def write_html(path: Path, sweep_dir: Path, jobs: list[Job], metrics: list[tuple[str, str, float]],
               study: str) -> None:
    """report.html beside report.png (which it embeds); `study` is the Optuna study's text of report.md."""
    keys, table = rows(jobs, metrics)
    sections = [f"<h1>Sweep report: {escape(str(sweep_dir))}</h1>",
                "<h2>Mean ± std over seeds</h2>", html_table(text_table(keys, table, metrics), "summary"),
                inline_png((path.parent / "report.png").read_bytes(), "report.png: the headline metric per group"),
                "<h2>Settings that differ between jobs</h2>", settings_table(jobs, metrics[0])]
    tags = [task_metrics(jobs)["monitor"], "val/loss"]
    curves = {job.folder.name: read_scalars(job.folder / "tensorboard", tags) for job in jobs}
    if any(curves.values()):
        sections += ["<h2>Validation curves</h2>",
                     inline_png(curves_png(jobs, keys, curves, tags), "validation curves of every job")]
    for status, title in (("failed", "Failed jobs"), ("unfinished", "Unfinished jobs"), ("pruned", "Pruned jobs")):
        listed = [job for job in jobs if job.status == status]
        if listed:
            cells = [[job.folder.name, settings_text(job, keys), job.error] for job in listed]
            sections += [f"<h2>{title}</h2>", html_table([["job", "settings", "why"], *cells], status)]
    if study:
        sections += ["<h2>Optuna search</h2>", f"<pre>{escape(study.strip())}</pre>"]
        sections += [inline_png(plot.read_bytes(), plot.name) for plot in sorted(sweep_dir.glob("optuna_*.png"))]
    path.write_text("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                    f"<title>Sweep report: {escape(str(sweep_dir))}</title><style>{STYLE}</style></head>\n"
                    "<body>\n" + "\n".join(sections) + "\n</body></html>\n")


def html_table(cells: list[list[str]], table_id: str, row_classes: list[str] | None = None) -> str:
    """A table from text cells, the first row its header; row_classes (one per body row) colour the rows."""
    header, *body = cells
    lines = [f"<table id='{table_id}'><tr>" + "".join(f"<th>{escape(text)}</th>" for text in header) + "</tr>"]
    for row, row_class in zip(body, row_classes or [""] * len(body), strict=True):
        opening = f"<tr class='{row_class}'>" if row_class else "<tr>"
        lines.append(opening + "".join(f"<td>{escape(text)}</td>" for text in row) + "</tr>")
    return "\n".join(lines) + "</table>"


def settings_table(jobs: list[Job], headline: tuple[str, str, float]) -> str:
    """One row per job: its number, the value of each override that differs between jobs (seed included), its
    status and its headline metric."""
    keys = varying_keys(jobs, ignored=())
    metric, title, scale = headline
    cells = [["job", *keys, "status", title]]
    for job in jobs:
        value = (job.metrics or {}).get(metric)
        shown = f"{scale * value:.{decimals(metric, scale)}f}" if isinstance(value, (int, float)) else "-"
        cells.append([job.folder.name, *(job.overrides.get(key, "-") for key in keys), job.status, shown])
    return html_table(cells, "jobs", row_classes=[job.status for job in jobs])


def read_scalars(logdir: Path, tags: list[str]) -> dict[str, list[tuple[float, float]]]:
    """{tag: [(epoch, value)]} of a run's TensorBoard events, for the tags it logged; the epoch is Lightning's
    `epoch` scalar at the same step."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    if not logdir.is_dir():
        return {}
    events = EventAccumulator(str(logdir), size_guidance={SCALARS: 0}).Reload()
    logged = events.Tags()["scalars"]
    if "epoch" not in logged:
        return {}
    epochs = {event.step: event.value for event in events.Scalars("epoch")}
    return {tag: [(epochs[e.step], e.value) for e in events.Scalars(tag) if e.step in epochs]
            for tag in tags if tag in logged}


def curves_png(jobs: list[Job], keys: list[str], curves: dict[str, dict], tags: list[str]) -> bytes:
    """One panel per tag, one line per job labelled by its differing settings; the jobs of a group (the seeds of
    one setting) share a colour."""
    import matplotlib.pyplot as plt

    shown = [tag for tag in tags if any(tag in scalars for scalars in curves.values())]
    figure, panels = plt.subplots(1, len(shown), figsize=(6.0 * len(shown), 4.0), squeeze=False)
    groups = list(dict.fromkeys(tuple(job.overrides.get(key, "-") for key in keys) for job in jobs))
    labelled = varying_keys(jobs, ignored=())
    for tag, axes in zip(shown, panels[0], strict=True):
        for job in jobs:
            points = curves[job.folder.name].get(tag)
            if not points:
                continue
            colour = plt.cm.tab10(groups.index(tuple(job.overrides.get(key, "-") for key in keys)) % 10)
            label = f"job {job.folder.name}: {settings_text(job, labelled)}"
            axes.plot([epoch for epoch, _ in points], [display_scale(tag) * value for _, value in points],
                      marker="o", markersize=3, color=colour, label=label)
        axes.set_xlabel("epoch")
        axes.set_ylabel(f"{tag}{'' if display_scale(tag) == 1 else ' (%)'}")
        axes.grid(alpha=0.3)
    lines = {label: line for axes in panels[0] for line, label in zip(*axes.get_legend_handles_labels(), strict=True)}
    panels[0][-1].legend(lines.values(), lines.keys(), loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8,
                         frameon=False)  # every job once, whichever panels it has lines in
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def settings_text(job: Job, keys: list[str]) -> str:
    return " ".join(f"{key}={job.overrides.get(key, '-')}" for key in keys)


def inline_png(data: bytes, description: str) -> str:
    return f"<img alt='{escape(description)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"

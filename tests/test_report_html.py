"""report.html as a browser shows it: sweep folders written by hand (overrides, config, metrics.json or failure.json,
real TensorBoard events), the report run on them, and the page read back from headless Chromium's DOM."""

import base64
import io
import json
import shutil
import statistics
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
import yaml
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from mnistlab.tools.report import main as report
from mnistlab.tools.report_html import read_scalars

from .conftest import run_in_process

CLASSIFICATION = {"task": {"metrics": {"monitor": "val/acc", "mode": "max", "best": "val/acc_best",
                                       "test": ["test/acc", "test/loss"]}}}


def write_job(sweep: Path, number: int, overrides: list[str], test_acc: float | None = None,
              error: str | None = None, val_acc: tuple[float, ...] = (0.5, 0.7, 0.8)) -> None:
    """A job folder as a sweep leaves it: .hydra/, metrics.json (or failure.json), and TensorBoard events with one
    validation per epoch, logged as Lightning logs them (the `epoch` scalar at the same step)."""
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(CLASSIFICATION))
    if test_acc is not None:
        (job / "metrics.json").write_text(json.dumps({"test/acc": test_acc, "val/acc_best": max(val_acc),
                                                      "test/loss": 0.3, "seconds_per_epoch": 2.0}))
    if error is not None:
        (job / "failure.json").write_text(json.dumps({"status": "failed", "error": error}))
    with SummaryWriter(job / "tensorboard") as writer:
        for epoch, accuracy in enumerate(val_acc):
            step = 10 * (epoch + 1)
            writer.add_scalar("epoch", epoch, step)
            writer.add_scalar("val/acc", accuracy, step)
            writer.add_scalar("val/loss", 1.0 - accuracy, step)


class Page(HTMLParser):
    """The parts of a DOM the tests read: tables by id (cell texts), images (alt, src), every tag and attribute,
    and every text."""

    def __init__(self, dom: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: dict[str, str] = {}
        self.tags: set[str] = set()
        self.attributes: list[tuple[str, str]] = []
        self.text: list[str] = []
        self.table: list[list[str]] | None = None
        self.in_cell = False
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attributes += [(name, value or "") for name, value in attrs]
        attributes = dict(attrs)
        if tag == "table":
            self.table = self.tables.setdefault(attributes["id"], [])
        elif tag == "tr":
            self.table.append([])
        elif tag in ("td", "th"):
            self.table[-1].append("")
            self.in_cell = True
        elif tag == "img":
            self.images[attributes["alt"]] = attributes["src"]

    def handle_endtag(self, tag):
        if tag == "table":
            self.table = None
        elif tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data):
        if self.in_cell:
            self.table[-1][-1] += data
        self.text.append(data)


def browser_dom(page: Path, profile: Path) -> Page:
    """The page's DOM as headless Chromium builds it (a page whose script called alert() would hang it: hence the
    timeout, some 30 times what a page takes)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: `apt-get install chromium` (.ci/run installs it); report.html is "
                    "checked in a real browser")
    shown = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                            "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and "</html>" in shown.stdout, shown.stderr[-3000:]
    return Page(shown.stdout)


def png(data_uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert data_uri.startswith(prefix)
    data = base64.b64decode(data_uri.removeprefix(prefix), validate=True)
    assert len(data) > 10_000  # a drawn figure, not an empty one
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def assert_offline(page: Page) -> None:
    """Nothing to fetch: no script, style sheet or frame, every src a data URI, no web address in the text."""
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    assert all(value.startswith("data:") for name, value in page.attributes if name in ("src", "href"))
    shown = " ".join(page.text) + " ".join(value for name, value in page.attributes if name != "src")
    assert "http:" not in shown and "https:" not in shown


def test_report_html_shows_the_table_settings_curves_and_failures_in_a_browser(tmp_path):
    accuracies = [0.90, 0.92, 0.97]
    for seed, accuracy in enumerate(accuracies):
        write_job(tmp_path, seed, ["+experiment=baseline", f"seed={seed}"], test_acc=accuracy)
    write_job(tmp_path, 3, ["+experiment=bag_of_tricks", "seed=0"], test_acc=0.95, val_acc=(0.6, 0.9))
    write_job(tmp_path, 4, ["+experiment=bag_of_tricks", "seed=1"], error="CUDA out of memory & <more>",
              val_acc=(0.4,))

    printed = run_in_process(report, str(tmp_path))
    assert printed.returncode == 0, printed.stderr
    assert f"{tmp_path / 'report.html'}" in printed.stdout
    page = browser_dom(tmp_path / "report.html", tmp_path / "chromium")

    mean = statistics.mean(100 * a for a in accuracies)
    spread = statistics.stdev(100 * a for a in accuracies)
    assert page.tables["summary"] == [
        ["experiment", "runs", "failed", "test/acc (%)", "val/acc_best (%)", "test/loss", "time per epoch (s)"],
        ["baseline", "3", "0", f"{mean:.2f} ± {spread:.2f}", "80.00 ± 0.00", "0.300 ± 0.000", "2.00 ± 0.00"],
        ["bag_of_tricks", "1", "1", "95.00", "90.00", "0.300", "2.00"]]
    markdown = (tmp_path / "report.md").read_text().splitlines()[2:4]  # the same rows as report.md's
    assert [" | ".join(row) for row in page.tables["summary"][1:]] == [line.strip("| ") for line in markdown]
    assert page.tables["jobs"] == [["job", "experiment", "seed", "status", "test/acc (%)"],
                                   ["0", "baseline", "0", "finished", "90.00"],
                                   ["1", "baseline", "1", "finished", "92.00"],
                                   ["2", "baseline", "2", "finished", "97.00"],
                                   ["3", "bag_of_tricks", "0", "finished", "95.00"],
                                   ["4", "bag_of_tricks", "1", "failed", "-"]]
    assert page.tables["failed"] == [["job", "settings", "why"],
                                     ["4", "experiment=bag_of_tricks", "CUDA out of memory & <more>"]]
    curves = png(page.images["validation curves of every job"])
    assert curves.width > 800 and curves.height > 300  # two panels (val/acc, val/loss) and their legend
    assert png(page.images["report.png: the headline metric per group"]).width > 300
    assert "Validation curves" in page.text and "Pruned jobs" not in page.text
    assert_offline(page)


def test_the_curves_are_the_events_per_epoch(tmp_path):
    write_job(tmp_path, 0, ["seed=1"], test_acc=0.9, val_acc=(0.5, 0.75))
    scalars = read_scalars(tmp_path / "0" / "tensorboard", ["val/acc", "val/loss", "val/miou"])
    assert scalars == {"val/acc": [(0, 0.5), (1, 0.75)], "val/loss": [(0, 0.5), (1, 0.25)]}  # exact in float32
    assert read_scalars(tmp_path / "1" / "tensorboard", ["val/acc"]) == {}  # a job that never logged


def test_report_html_escapes_overrides_and_errors(tmp_path):
    write_job(tmp_path, 0, ["name=<script>alert(1)</script>"], test_acc=0.9)
    write_job(tmp_path, 1, ["name=plain"], error="<img src=x onerror=alert(2)>")

    assert run_in_process(report, str(tmp_path)).returncode == 0
    page = browser_dom(tmp_path / "report.html", tmp_path / "chromium")
    assert page.tables["jobs"][1][:2] == ["0", "<script>alert(1)</script>"]  # shown as text, never run
    assert page.tables["failed"][1] == ["1", "name=plain", "<img src=x onerror=alert(2)>"]
    assert "script" not in page.tags and set(page.images) == {"report.png: the headline metric per group",
                                                             "validation curves of every job"}
    assert_offline(page)


def test_report_html_lists_pruned_trials_and_embeds_the_optuna_plots(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="optuna", storage=storage, direction="maximize")
    searched = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-8, 1.0, log=True)}
    for number, lr in enumerate([0.05, 0.1]):
        study.add_trial(optuna.trial.create_trial(params={"optimizer.lr": lr}, distributions=searched,
                                                  value=0.8 + lr))
        write_job(tmp_path, number, [f"optimizer.lr={lr}"], test_acc=0.8 + lr)
    study.add_trial(optuna.trial.create_trial(params={"optimizer.lr": 1e-7}, distributions=searched,
                                              state=optuna.trial.TrialState.PRUNED))
    write_job(tmp_path, 2, ["optimizer.lr=1e-7"], val_acc=(0.1,))
    (tmp_path / "2" / "pruned.json").write_text(json.dumps({"status": "pruned", "epoch": 0, "trial": 2}))
    (tmp_path / "optuna_study.json").write_text(json.dumps({"storage": storage, "study_name": "optuna"}))

    assert run_in_process(report, str(tmp_path)).returncode == 0
    page = browser_dom(tmp_path / "report.html", tmp_path / "chromium")
    assert page.tables["pruned"] == [["job", "settings", "why"],
                                     ["2", "optimizer.lr=1e-07", "pruned by the Optuna pruner after epoch 0"]]
    assert [row[-2] for row in page.tables["jobs"][1:]] == ["finished", "finished", "pruned"]
    assert any("Optuna study 'optuna'" in text and "2 complete, 1 pruned" in text for text in page.text)
    for plot in ("optuna_history.png", "optuna_importances.png", "optuna_parallel_coordinate.png"):
        png(page.images[plot])
    assert_offline(page)

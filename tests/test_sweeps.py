"""Sweeps: Hydra multirun grids, an Optuna search, a failing job that does not stop the sweep, the report."""

import csv
import json
import math
import statistics
import subprocess
import sys

import pytest
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnistlab.sweep_results import collect, columns, rows
from mnistlab.tools.report import main as report_main
from mnistlab.tools.report import markdown

from .conftest import FAST, REPO, offline_env, run_in_process, run_train, train_main

QUICK = [*FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=4", "callbacks=minimal"]


def report(sweep_dir) -> subprocess.CompletedProcess:
    """`mnistlab-report SWEEP_DIR`, its main in process: the report reads the folder, not the process."""
    return run_in_process(report_main, str(sweep_dir))


@pytest.mark.slow
def test_a_2x2_grid_gives_four_jobs_and_a_four_row_report(tmp_path, synthetic_root, monkeypatch):
    sweep = tmp_path / "grid"
    result = train_main(monkeypatch, "-m", "model.downsample=pool,stride", "optimizer.lr=0.05,0.1",
                        f"data.root={synthetic_root}", f"hydra.sweep.dir={sweep}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == ["0", "1", "2", "3"]

    printed = report(sweep)
    assert printed.returncode == 0, printed.stderr
    table = (sweep / "report.md").read_text().splitlines()
    assert table[0].startswith("| model.downsample | optimizer.lr | runs | failed | test/acc (%) |")
    assert [line.split(" | ")[:2] for line in table[2:]] == [["| pool", "0.05"], ["| pool", "0.1"],
                                                              ["| stride", "0.05"], ["| stride", "0.1"]]
    with (sweep / "report.csv").open() as handle:
        records = list(csv.DictReader(handle))
    assert len(records) == 4
    for record, job in zip(records, ["0", "1", "2", "3"], strict=True):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert float(record["test/acc_mean"]) == pytest.approx(100 * metrics["test/acc"], rel=1e-5)
        assert record["test/acc_std"] == ""  # one seed per cell: no spread to report
    with Image.open(sweep / "report.png") as chart:
        assert chart.format == "PNG" and chart.width > 300 and chart.height > 100


@pytest.mark.slow
def test_one_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path, synthetic_root, monkeypatch):
    sweep = tmp_path / "sweep"
    result = train_main(monkeypatch, "-m", "model.downsample=bogus,pool", f"data.root={synthetic_root}",
                        f"hydra.sweep.dir={sweep}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    failure = json.loads((sweep / "0" / "failure.json").read_text())
    assert failure["error"] == "model.downsample='bogus' must be one of pool, stride"
    assert "model.downsample=bogus" in failure["overrides"] and "Traceback" in failure["traceback"]
    assert "error: job 0 failed, the sweep goes on: model.downsample='bogus'" in result.stderr
    assert (sweep / "1" / "metrics.json").is_file()  # the job after the failure ran

    printed = report(sweep)
    assert printed.returncode == 0
    assert "| bogus | 0 | 1 | - | - | - | - |" in printed.stdout
    assert ("- job 0 (model.downsample=bogus): model.downsample='bogus' must be one of pool, stride"
            in printed.stdout)


@pytest.mark.slow
def test_a_job_whose_config_does_not_compose_is_recorded_and_the_sweep_goes_on(tmp_path, synthetic_root, monkeypatch):
    """`model=seednet,resnet model.hidden=100`: the ResNet has no `hidden`, so job 1 cannot even be composed; Hydra's
    own sweeper would compose every job first and stop them all."""
    sweep = tmp_path / "sweep"
    result = train_main(monkeypatch, "-m", "model=resnet,seednet", "model.hidden=100", f"data.root={synthetic_root}",
                        f"hydra.sweep.dir={sweep}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    failure = json.loads((sweep / "0" / "failure.json").read_text())
    assert failure["error"].startswith("Could not override 'model.hidden'") and "model=resnet" in failure["overrides"]
    assert "error: job 0 failed, the sweep goes on: Could not override 'model.hidden'" in result.stderr
    assert (sweep / "1" / "metrics.json").is_file()  # the job after it ran
    printed = report(sweep)
    assert printed.returncode == 0 and "- job 0 (model=resnet): Could not override 'model.hidden'" in printed.stdout


@pytest.mark.slow
def test_an_optuna_search_returns_the_best_val_acc_best(tmp_path, synthetic_root, monkeypatch):
    sweep = tmp_path / "optuna"
    searched = [o for o in QUICK if not o.startswith("data.batch_size=")]  # a fixed value would replace the search
    result = train_main(monkeypatch, "hparams_search=optuna", "hydra.sweeper.n_trials=3", f"data.root={synthetic_root}",
                        f"hydra.sweep.dir={sweep}", *searched)
    assert result.returncode == 0, result.stderr[-3000:]
    best = json.loads((sweep / "optimization_results.json").read_text())
    trials = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert len(trials) == 3
    assert best["best_value"] == pytest.approx(max(t["val/acc_best"] for t in trials))
    assert set(best["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "data.batch_size",
                                        "tricks.label_smoothing", "tricks.mixup_alpha"}
    # Each trial's settings come from the search space.
    for job in sweep.glob("*/.hydra/config.yaml"):
        config = yaml.safe_load(job.read_text())
        assert 0.005 <= config["optimizer"]["lr"] <= 0.3 and config["data"]["batch_size"] in (32, 64, 128, 256)


@pytest.mark.slow
def test_an_optuna_search_without_validation_fails_each_trial_in_one_line(tmp_path, synthetic_root, monkeypatch):
    sweep = tmp_path / "optuna"
    result = train_main(monkeypatch, "hparams_search=optuna", "hydra.sweeper.n_trials=1", f"data.root={synthetic_root}",
                        f"hydra.sweep.dir={sweep}", *QUICK, "data.val_size=0")
    failure = json.loads((sweep / "0" / "failure.json").read_text())
    assert failure["error"] == ("data.val_size=0 leaves the Optuna search nothing to optimise (it optimises "
                                "val/acc_best): keep a validation split for the search, and use val_size=0 for "
                                "the final fit")
    assert not (sweep / "0" / "checkpoints").exists(), result.stderr[-3000:]  # refused before training


@pytest.mark.slow
def test_the_ablation_script_runs_each_experiment_over_seeds_and_reports(tmp_path, synthetic_root):
    sweep = tmp_path / "ablation"
    result = subprocess.run([sys.executable, "scripts/ablation.py", "--seeds", "2", "--experiments", "baseline,bn",
                             "--out", str(sweep), "--", f"data.root={synthetic_root}", *QUICK],
                            cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (sweep / "report.md").read_text().splitlines()
    assert table[0].startswith("| experiment | runs | failed |")
    assert [line.split(" | ")[:3] for line in table[2:]] == [["| baseline", "2", "0"], ["| bn", "2", "0"]]


def fake_job(sweep, number: int, overrides: list[str], metrics: dict | None = None, error: str | None = None):
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (job / "failure.json").write_text(json.dumps({"status": "failed", "error": error}))


def test_report_mean_and_std_over_seeds_match_a_hand_computation(tmp_path):
    accuracies = [0.90, 0.92, 0.97]
    for seed, acc in enumerate(accuracies):
        fake_job(tmp_path, seed, ["+experiment=baseline", f"seed={seed}", "data=fashion_mnist"],
                 {"test/acc": acc, "val/acc_best": acc + 0.01, "test/loss": 0.3, "seconds_per_epoch": 10.0 + seed})
    fake_job(tmp_path, 3, ["+experiment=bag_of_tricks", "seed=0", "data=fashion_mnist"],
             {"test/acc": 0.95, "val/acc_best": 0.96, "test/loss": 0.2, "seconds_per_epoch": 5.0})
    fake_job(tmp_path, 4, ["+experiment=bag_of_tricks", "seed=1", "data=fashion_mnist"], error="out of memory")
    (tmp_path / "5").mkdir()  # not a job folder: ignored

    jobs = collect(tmp_path)
    metrics = columns(jobs)  # fake jobs have no config: the classification task's names
    assert [title for _, title, _ in metrics] == ["test/acc (%)", "val/acc_best (%)", "test/loss",
                                                  "time per epoch (s)"]
    keys, table = rows(jobs, metrics)
    assert keys == ["experiment"]  # data= is the same everywhere and seed is averaged over
    mean = statistics.mean(a * 100 for a in accuracies)
    spread = (sum((a * 100 - mean) ** 2 for a in accuracies) / (len(accuracies) - 1)) ** 0.5  # sample std
    assert table[0]["test/acc"] == pytest.approx((mean, spread))
    lines = markdown(keys, table, jobs, metrics).splitlines()
    assert lines[2] == (f"| baseline | 3 | 0 | {mean:.2f} ± {spread:.2f} | {mean + 1:.2f} ± {spread:.2f} "
                        "| 0.300 ± 0.000 | 11.00 ± 1.00 |")
    assert lines[3] == "| bag_of_tricks | 1 | 1 | 95.00 | 96.00 | 0.200 | 5.00 |"
    assert lines[-1] == "- job 4 (experiment=bag_of_tricks): out of memory"


def test_report_leaves_best_val_blank_for_runs_without_validation(tmp_path):
    # data.val_size=0 runs write val/acc_best as null: no validation.
    for seed, (acc, unvalidated) in enumerate([(0.93, None), (0.95, math.nan)]):  # NaN: as older runs wrote it
        fake_job(tmp_path, seed, ["data.val_size=0", f"seed={seed}"],
                 {"test/acc": acc, "val/acc_best": unvalidated, "test/loss": 0.2, "seconds_per_epoch": 5.0})
    jobs = collect(tmp_path)
    keys, table = rows(jobs, columns(jobs))
    assert table[0]["val/acc_best"] is None and table[0]["test/acc"][0] == pytest.approx(94.0)
    row = "| all | 2 | 0 | 94.00 ± 1.41 | - | 0.200 ± 0.000 | 5.00 ± 0.00 |"
    assert markdown(keys, table, [], columns(jobs)).splitlines()[2] == row


def test_report_of_an_empty_folder_is_one_line(tmp_path):
    result = report(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: no job folders (*/.hydra/overrides.yaml) under {tmp_path}: "
                                     "is it a multirun folder?")


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_processes(tmp_path, synthetic_root):
    sweep = tmp_path / "parallel"
    result = run_train("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2",
                       f"data.root={synthetic_root}", f"hydra.sweep.dir={sweep}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    runs = [json.loads((sweep / job / "metrics.json").read_text()) for job in ("0", "1")]
    assert all(run["epochs"] == 1 for run in runs)


def files_and_times(folder) -> dict:
    return {path.relative_to(folder): path.stat().st_mtime_ns for path in sorted(folder.rglob("*"))}


@pytest.mark.slow
def test_a_sweep_killed_mid_job_and_rerun_keeps_the_finished_jobs_and_resumes_the_interrupted_one(tmp_path,
                                                                                                   synthetic_root):
    sweep = tmp_path / "sweep"
    command = ["-m", "seed=1,2,3,4,5,6", f"data.root={synthetic_root}", f"hydra.sweep.dir={sweep}", *FAST,
               "trainer.limit_train_batches=4", "callbacks=minimal", "+callbacks.crash._target_=tests.crash.KillOnce",
               f"+callbacks.crash.marker={tmp_path / 'killed'}", "+callbacks.crash.job=2"]
    killed = run_train(*command)
    assert killed.returncode == -9, killed.stderr[-3000:]  # the process died in job 2's second epoch
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == ["0", "1"]
    assert (sweep / "2" / "checkpoints" / "last.ckpt").is_file() and not (sweep / "3").exists()
    before = {job: files_and_times(sweep / job) for job in ("0", "1")}

    # A process of its own, as a user reruns it. TensorBoard names an event file by the second it opens and the
    # process id: a rerun in the test's process, within the killed job's second, could sort its file first.
    rerun = run_train(*command)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Continuing the sweep in {sweep}: 2 finished, 1 resumed, 0 rerun, 3 to run" in rerun.stdout
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == ["0", "1", "2", "3", "4", "5"]
    assert {job: files_and_times(sweep / job) for job in ("0", "1")} == before  # not a byte rewritten
    resumed = sweep / "2"
    assert "resuming this job from" in (resumed / "train.log").read_text()
    assert json.loads((resumed / "metrics.json").read_text())["epochs"] == 2
    curve = EventAccumulator(str(resumed / "tensorboard")).Reload().Scalars("val/acc")
    assert [event.step for event in curve] == sorted({event.step for event in curve}) and len(curve) == 2
    assert not (resumed / "earlier-attempts").exists()
    assert len(collect(sweep)) == 6 and all(job.metrics for job in collect(sweep))


@pytest.mark.slow
def test_a_rerun_sweep_runs_its_failed_jobs_again_and_another_sweep_is_refused(tmp_path, synthetic_root, monkeypatch):
    sweep, late = tmp_path / "sweep", tmp_path / "late"  # job 1's data arrives after the first attempt
    command = ["-m", f"data.root={synthetic_root},{late}", f"hydra.sweep.dir={sweep}", *QUICK]
    first = train_main(monkeypatch, *command)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "1" / "failure.json").is_file()
    late.symlink_to(synthetic_root)
    kept = files_and_times(sweep / "0")

    other = train_main(monkeypatch, "-m", "seed=7,8", f"data.root={synthetic_root}", f"hydra.sweep.dir={sweep}", *QUICK)
    assert other.returncode == 2
    assert other.stderr.startswith(f"error: {sweep} holds the jobs of another sweep (0/ is a job of ")
    assert other.stderr.endswith(f"rerun that sweep's own command to continue it, give another hydra.sweep.dir, "
                                 f"or remove {sweep}\n") and other.stderr.count("\n") == 1
    assert not (sweep / "0" / "earlier-attempts").exists() and files_and_times(sweep / "0") == kept

    again = train_main(monkeypatch, *command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Continuing the sweep in {sweep}: 1 finished, 0 resumed, 1 rerun, 0 to run" in again.stdout
    assert files_and_times(sweep / "0") == kept
    assert json.loads((sweep / "1" / "metrics.json").read_text())["epochs"] == 1
    assert not (sweep / "1" / "failure.json").exists()
    earlier = sweep / "1" / "earlier-attempts" / "1"
    assert str(late) in json.loads((earlier / "failure.json").read_text())["error"]


@pytest.mark.slow
def test_ctrl_c_in_a_sweep_says_how_to_continue_it_and_the_rerun_does(tmp_path, synthetic_root, monkeypatch):
    sweep = tmp_path / "sweep"
    command = ["-m", "seed=1,2", f"data.root={synthetic_root}", f"hydra.sweep.dir={sweep}", *FAST, "callbacks=minimal",
               "+callbacks.crash._target_=tests.crash.KillOnce", f"+callbacks.crash.marker={tmp_path / 'stopped'}",
               "+callbacks.crash.job=1", "+callbacks.crash.ctrl_c=true"]
    stopped = run_train(*command)
    assert stopped.returncode != 0
    last = sweep / "1" / "checkpoints" / "last.ckpt"
    assert ("rerun the sweep's command into its folder (hydra.sweep.dir) to continue it: this job resumes from "
            f"{last}") in stopped.stdout
    rerun = train_main(monkeypatch, *command)  # the rerun reads the folder: in process
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Continuing the sweep in {sweep}: 1 finished, 1 resumed, 0 rerun, 0 to run" in rerun.stdout
    assert json.loads((sweep / "1" / "metrics.json").read_text())["epochs"] == 2


def test_the_plan_reads_each_job_folder_and_a_broken_file_never_counts_as_finished(tmp_path):
    from mnistlab.sweep_plan import FINISHED, NEW, RERUN, RESUMED, finished_value, plan_sweep

    jobs = [[f"seed={seed}"] for seed in range(6)]
    for num, files in enumerate([{"metrics.json": '{"val/acc_best": 0.9}', ".hydra/config.yaml": "task: [unreadable"},
                                 {"metrics.json": '{"val/acc_be'},  # cut off as it was written
                                 {"checkpoints/last.ckpt": ""},
                                 {"checkpoints/last.ckpt": "", "failure.json": "{}"},
                                 {}]):
        (tmp_path / str(num) / ".hydra").mkdir(parents=True)
        (tmp_path / str(num) / ".hydra" / "overrides.yaml").write_text(f"- seed={num}\n")
        for name, text in files.items():
            (tmp_path / str(num) / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / str(num) / name).write_text(text)
    plan = plan_sweep(tmp_path, jobs, numbered=True)
    assert plan.states == [FINISHED, RERUN, RESUMED, RERUN, RERUN, NEW]
    assert plan.summary() == "1 finished, 1 resumed, 3 rerun, 1 to run"
    assert finished_value(tmp_path / "0") == 0.9  # the classification task's metric when the config is unreadable
    (job,) = [job for job in collect(tmp_path) if job.folder.name == "1"]
    assert job.status == "unfinished" and job.metrics is None

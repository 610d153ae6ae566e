"""Searches with mnistlab's Optuna sweeper (hparams_search=optuna), run for real as a user runs them: pruning, a
search that survives SIGKILL, two workers on one study, and the report's view of the study (in process where only
what the search writes or prints is read: train.py's main(), the report's)."""

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch

from mnistlab.search import OptunaPruning, threads_per_job
from mnistlab.tools.report import main as report_main

from .conftest import REPO, offline_env, run_in_process, train_main

# Every searched setting fixed on the command line (it wins over the search space): the runs are reproducible.
FIXED = ["optimizer.weight_decay=0", "data.batch_size=64", "tricks.label_smoothing=0", "tricks.mixup_alpha=0"]
STATES = optuna.trial.TrialState


def search_args(root: Path, *overrides: str) -> list[str]:
    return ["hparams_search=optuna", f"data.root={root}", "data.val_size=200", "callbacks=minimal",
            "~callbacks.not_learning", "trainer.enable_progress_bar=false", *FIXED, *overrides]


def search(root: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *search_args(root, *overrides)]


def trials(folder: Path) -> dict[int, STATES]:
    study = optuna.load_study(study_name="optuna", storage=f"sqlite:///{folder / 'optuna.db'}")
    return {trial.number: trial.state for trial in study.get_trials()}


def test_threads_per_job_share_the_cores():
    assert [threads_per_job(8, n) for n in (1, 2, 3, 8, 16, -1, None)] == [8, 4, 2, 1, 1, 1, 1]
    assert threads_per_job(2, 2) == 1


def test_a_hopeless_trial_stops_before_its_last_epoch_and_never_after_it():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    good = study.ask()
    for epoch in range(3):
        good.report(0.9, epoch)
    study.tell(good, 0.9)

    def validate(pruning: OptunaPruning, epoch: int) -> bool:
        trainer = SimpleNamespace(sanity_checking=False, callback_metrics={"val/acc": torch.tensor(0.1)},
                                  current_epoch=epoch, max_epochs=3, should_stop=False)
        pruning.on_validation_end(trainer, None)
        return trainer.should_stop

    early = OptunaPruning(study.ask(), "val/acc")
    assert validate(early, 0) and early.pruned_at == 0
    late = OptunaPruning(study.ask(), "val/acc")
    assert not validate(late, 2) and late.pruned_at is None  # its last epoch: complete, however poor
    assert study.trials[-1].intermediate_values == {2: pytest.approx(0.1)}  # still reported


@pytest.mark.slow
def test_a_hopeless_trial_is_pruned_and_the_study_continues(synthetic_root, tmp_path, monkeypatch):
    folder = tmp_path / "logs" / "optuna" / "search"
    monkeypatch.chdir(tmp_path)  # the search's folder is under the working folder's logs/
    first = train_main(monkeypatch, *search_args(synthetic_root, "optimizer.lr=0.05", "trainer.max_epochs=3",
                                                 "hydra.sweeper.n_trials=1"))
    assert first.returncode == 0, first.stderr[-3000:]
    # The same search again with a larger budget continues the study: trial 1, whose learning rate cannot learn
    # anything in 3 epochs, reports far below trial 0 after its first epoch and is pruned there.
    pruner = "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:1,n_warmup_steps:0}"
    second = train_main(monkeypatch, *search_args(synthetic_root, "optimizer.lr=0.0000001", "trainer.max_epochs=3",
                                                  "hydra.sweeper.n_trials=2", pruner))
    assert second.returncode == 0, second.stderr[-3000:]
    assert trials(folder) == {0: STATES.COMPLETE, 1: STATES.PRUNED}
    assert json.loads((folder / "1" / "pruned.json").read_text()) == {"status": "pruned", "epoch": 0, "trial": 1}
    assert not (folder / "1" / "metrics.json").exists()
    results = json.loads((folder / "optimization_results.json").read_text())
    assert results["trials"] == {"complete": 1, "pruned": 1, "fail": 0} and results["best_trial"] == 0

    report = run_in_process(report_main, str(folder))  # the report reads the folder: in process
    assert report.returncode == 0, report.stderr[-3000:]
    assert "pruned by the Optuna pruner after epoch 0" in report.stdout
    assert "Optuna study 'optuna'" in report.stdout and "1 complete, 1 pruned" in report.stdout
    assert all((folder / name).stat().st_size > 0 for name in ("optuna_history.png", "optuna_parallel_coordinate.png"))

    # docs/sweeps.md's command serves this study: read it back through optuna-dashboard's HTTP API.
    summaries, study = dashboard_view(f"sqlite:///{folder / 'optuna.db'}")
    assert [s["study_name"] for s in summaries] == ["optuna"] and summaries[0]["directions"] == ["maximize"]
    assert [(t["number"], t["state"]) for t in study["trials"]] == [(0, "Complete"), (1, "Pruned")]
    assert study["has_intermediate_values"] and study["best_trials"][0]["number"] == 0


def dashboard_view(storage: str) -> tuple[list[dict], dict]:
    """(study summaries, the first study) as optuna-dashboard serves them over HTTP."""
    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    if dashboard is None:
        pytest.skip("optuna-dashboard is not installed (pip install -e '.[sweep]')")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    server = subprocess.Popen([dashboard, storage, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    summaries = json.load(response)["study_summaries"]
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "optuna-dashboard did not start"
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summaries[0]['study_id']}?after=0",
                                    timeout=5) as response:
            return summaries, json.load(response)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_a_search_killed_mid_trial_continues_to_its_budget(synthetic_root, tmp_path):
    folder = tmp_path / "logs" / "optuna" / "search"
    command = search(synthetic_root, "optimizer.lr=0.05", "trainer.max_epochs=4", "trainer.limit_train_batches=4",
                     "hydra.sweeper.n_trials=3", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2")
    process = subprocess.Popen(command, cwd=tmp_path, env=offline_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not (folder / "1" / ".hydra").is_dir():  # trial 1 has started
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert trials(folder) == {0: STATES.COMPLETE, 1: STATES.RUNNING}

    again = subprocess.run(command, cwd=tmp_path, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    # The killed trial failed (its heartbeat stopped), and counts toward the budget of 3.
    assert trials(folder) == {0: STATES.COMPLETE, 1: STATES.FAIL, 2: STATES.COMPLETE}


@pytest.mark.slow
def test_two_workers_share_one_study_with_distinct_trials(synthetic_root, tmp_path):
    folder = tmp_path / "logs" / "optuna" / "search"
    command = search(synthetic_root, "trainer.max_epochs=2", "trainer.limit_train_batches=4",
                     "hydra.sweeper.n_trials=4", "optimizer.lr=tag(log,interval(0.01,0.1))")
    workers = [subprocess.Popen(command, cwd=tmp_path, env=offline_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:
        assert worker.wait(timeout=900) == 0, worker.communicate()[1][-3000:]
    states = trials(folder)
    # Each worker asks while the study is under budget: both may ask for the last one, so at most one more.
    assert 4 <= len(states) <= 5 and set(states.values()) == {STATES.COMPLETE}
    assert sorted(states) == list(range(len(states)))
    assert all(json.loads((folder / str(n) / "metrics.json").read_text())["epochs"] == 2 for n in states)


WARNING_WITH_A_PATH = re.compile(r"\.py:\d+|Warning:")


@pytest.mark.slow
def test_a_search_and_its_report_print_no_warning_with_a_path_and_echo_what_the_user_typed(synthetic_root, tmp_path):
    folder = tmp_path / "search"
    ran = subprocess.run(search(synthetic_root, "trainer.max_epochs=1", "hydra.sweeper.n_trials=2",
                                f"hydra.sweep.dir={folder}"), cwd=tmp_path, env=offline_env(),
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(folder)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    for output in (ran.stdout, ran.stderr, report.stdout, report.stderr):
        assert not WARNING_WITH_A_PATH.search(output), WARNING_WITH_A_PATH.search(output).string[-1500:]
    echoed = [line for line in ran.stdout.splitlines() + ran.stderr.splitlines() if re.search(r"#\d+ : ", line)]
    assert len(echoed) == 2 and all(" trainer.max_epochs=1" in line and "++" not in line for line in echoed)

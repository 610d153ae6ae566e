"""The trackers besides TensorBoard (`logger=csv`, `logger=mlflow`, several at once), read back with their own
readers: the csv module for metrics.csv, MLflow's MlflowClient for its SQLite store."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from pytorch_lightning.callbacks import Callback

from mnistlab.config import compose_run_config
from mnistlab.errors import ConfigError
from mnistlab.override_errors import unknown_choice
from mnistlab.validation import check_config

from .conftest import FAST, REPO, offline_env, train_in_process, train_main


def test_logger_choices_compose_alone_and_together():
    for choice in ("csv", "mlflow", "[tensorboard,mlflow]", "[tensorboard,mlflow,csv]"):
        assert unknown_choice([f"logger={choice}"]) is None
        chosen = compose_run_config([f"logger={choice}"]).logger
        assert list(chosen) == choice.strip("[]").split(",")
    assert "choose one of: csv, mlflow, tensorboard" in unknown_choice(["logger=[tensorboard,mlfow]"])


def test_a_logger_setting_is_checked_against_the_logger_before_anything_runs():
    with pytest.raises(ConfigError, match=r"^logger.mlflow.log_model='maybe' must be one of True, False, all$"):
        check_config(compose_run_config(["logger=mlflow", "logger.mlflow.log_model=maybe"]))
    with pytest.raises(ConfigError, match=r"^logger.csv.version=\[1, 2\] must be "):
        check_config(compose_run_config(["logger=csv", "logger.csv.version=[1,2]"]))


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory, synthetic_root) -> dict:
    folder = tmp_path_factory.mktemp("csv") / "run"
    metrics = train_in_process(folder, *FAST, f"data.root={synthetic_root}", "logger=csv")
    return {"folder": folder, "metrics": metrics}


@pytest.mark.slow
def test_csv_logger_writes_a_row_per_epoch_with_the_step(csv_run):
    folder = csv_run["folder"]
    assert not (folder / "tensorboard").exists()  # the TensorBoard views had no writer, and stayed quiet
    with (folder / "csv" / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    validations = [row for row in rows if row["val/acc"]]
    assert [int(row["epoch"]) for row in validations] == [0, 1]
    steps = [int(row["step"]) for row in validations]
    assert steps == sorted(steps) and steps[0] > 0
    assert max(float(row["val/acc"]) for row in validations) == pytest.approx(csv_run["metrics"]["val/acc_best"])
    assert sum(1 for row in rows if row["train/loss_step"]) >= 2
    tested = [row for row in rows if row["test/acc"]]
    assert len(tested) == 1 and float(tested[0]["test/acc"]) == pytest.approx(csv_run["metrics"]["test/acc"])
    settings = yaml.safe_load((folder / "csv" / "hparams.yaml").read_text())
    assert settings["optimizer.lr"] == 0.05 and settings["model"] == "SeedNet"


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory, synthetic_root) -> dict:
    root = tmp_path_factory.mktemp("mlflow")
    store = f"sqlite:///{root}/store/mlflow.db"  # a folder that does not exist yet
    metrics = train_in_process(root / "run", *FAST, f"data.root={synthetic_root}", "logger=[tensorboard,mlflow]",
                               f"logger.mlflow.tracking_uri={store}", "optimizer.lr=0.04")
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("default")
    (run,) = client.search_runs([experiment.experiment_id])
    return {"root": root, "metrics": metrics, "client": client, "run": run}


@pytest.mark.slow
def test_mlflow_holds_the_settings_every_scalar_and_the_final_metrics(mlflow_run):
    run, client, metrics = mlflow_run["run"], mlflow_run["client"], mlflow_run["metrics"]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"  # named after the run folder
    params = run.data.params
    assert params["optimizer.lr"] == "0.04" and params["model"] == "SeedNet" and params["trainer.max_epochs"] == "2"
    assert not any(key.startswith("callbacks.model_checkpoint") for key in params)
    assert [key for key in params if key.startswith("logger.")] == ["logger.mlflow.tracking_uri"]  # given: kept

    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert len(history) == 2 and history[0].step < history[1].step
    assert max(point.value for point in history) == pytest.approx(metrics["val/acc_best"])
    assert len(client.get_metric_history(run.info.run_id, "train/loss_step")) >= 2
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert run.data.metrics["test/loss"] == pytest.approx(metrics["test/loss"])

    folder = mlflow_run["root"] / "run"
    assert run.data.tags["best_checkpoint"] == metrics["best_checkpoint"]
    assert run.data.tags["run_folder"] == str(folder.resolve())
    assert [artifact.path for artifact in client.list_artifacts(run.info.run_id)] == ["metrics.json"]
    assert (mlflow_run["root"] / "store" / "mlartifacts").is_dir()  # beside the database, not ./mlruns
    assert not (REPO / "mlruns").exists()
    assert any((folder / "tensorboard").iterdir())  # TensorBoard beside it, as before


@pytest.mark.slow
def test_an_mlflow_run_that_fails_after_training_ends_failed(tmp_path, synthetic_root, monkeypatch):
    def broken(*args):
        raise OSError("the checkpoint is gone")

    monkeypatch.setattr("mnistlab.train.load_tested_weights", broken)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(OSError, match="the checkpoint is gone"):
        train_in_process(tmp_path / "run", *FAST, f"data.root={synthetic_root}", "logger=mlflow",
                         f"logger.mlflow.tracking_uri={store}", "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("default").experiment_id])
    assert run.info.status == "FAILED"


class InterruptTheSecondEpoch(Callback):
    """Ctrl-C as the second epoch starts, after the first one's checkpoints."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_a_run_resumed_in_its_folder_continues_its_mlflow_run(tmp_path, synthetic_root):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    args = [*FAST, f"data.root={synthetic_root}", "callbacks=minimal", "logger=mlflow",
            f"logger.mlflow.tracking_uri={store}"]
    with pytest.raises(SystemExit):  # Lightning ends a Ctrl-C with exit status 1
        train_in_process(tmp_path / "run", *args,
                         "+callbacks.cut._target_=tests.test_loggers.InterruptTheSecondEpoch")
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("default").experiment_id
    (cut,) = client.search_runs([experiment])
    assert len(client.get_metric_history(cut.info.run_id, "val/acc")) == 1

    resumed = train_in_process(tmp_path / "run", *args, "ckpt_path=last")
    (run,) = client.search_runs([experiment])  # the same run, not a second one
    assert run.info.run_id == cut.info.run_id and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert len(history) == 2 and history[0].step < history[1].step
    assert max(point.value for point in history) == pytest.approx(resumed["val/acc_best"])

    train_in_process(tmp_path / "other", *args)  # another folder: a run of its own
    assert len(client.search_runs([experiment])) == 2


@pytest.mark.slow
def test_a_sweep_lands_in_one_mlflow_experiment_named_after_its_folder(tmp_path, synthetic_root, monkeypatch):
    sweep, store = tmp_path / "sweep", f"sqlite:///{tmp_path}/mlflow.db"
    result = train_main(monkeypatch, "-m", "seed=1,2", "model.downsample=pool,stride", "logger=mlflow",
                        f"logger.mlflow.tracking_uri={store}", f"data.root={synthetic_root}",
                        f"hydra.sweep.dir={sweep}", *FAST, "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "tensorboard   " not in result.stdout
    assert result.stdout.count(f"mlflow        mlflow ui --backend-store-uri {store}  # experiment {sweep}") == 4

    client = MlflowClient(store)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert [e.name for e in experiments] == [str(sweep)]
    runs = client.search_runs([experiments[0].experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["0", "1", "2", "3"]
    swept = set()
    for run in runs:
        job = sweep / run.info.run_name
        metrics = json.loads((job / "metrics.json").read_text())
        assert run.info.status == "FINISHED"
        swept.add((run.data.params["seed"], run.data.params["model.downsample"]))
        assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 1
        assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
        assert run.data.tags["best_checkpoint"] == metrics["best_checkpoint"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"metrics.json", "hydra"}
        hydra = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "hydra")}
        assert hydra == {"config.yaml", "overrides.yaml"}
    assert swept == {(seed, way) for seed in ("1", "2") for way in ("pool", "stride")}


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["mlflow", "[tensorboard,mlflow]"])
def test_logger_mlflow_without_mlflow_is_one_line_naming_the_extra(tmp_path, choice):
    hidden = tmp_path / "hidden"
    (hidden / "mlflow").mkdir(parents=True)
    (hidden / "mlflow" / "__init__.py").write_text("raise ImportError('mlflow is not installed')\n")
    env = {**offline_env(), "PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])}
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "train.py", f"logger={choice}", f"hydra.run.dir={run_dir}"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: logger=mlflow needs mlflow, which is not installed: pip install -e '.[mlflow]' (mnistlab's mlflow "
        "extra) installs it"]
    assert not run_dir.exists()

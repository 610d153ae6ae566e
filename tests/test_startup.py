"""Start-up: what a default run imports (a fresh `python -X importtime train.py`, whose every import Python itself
lists), and the tool that times a run's start and end."""

import re
import subprocess
import sys

import pytest

from mnistlab.tools import startup

from .conftest import FAST, REPO, offline_env

# Packages mnistlab can use that a plain training run never needs: searches and their storage, the other trackers,
# export, the parallel and SLURM launchers, data frames.
NOT_FOR_A_RUN = ["optuna", "optuna_dashboard", "sqlalchemy", "mlflow", "onnx", "onnxruntime", "onnxscript",
                 "submitit", "pandas", "sklearn"]
TINY = [*FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1"]


def imported_packages(importtime_log: str) -> set[str]:
    """The top-level packages in `python -X importtime`'s report: one line per module imported."""
    return {match.group(1).split(".")[0]
            for match in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s+([\w.]+)$", importtime_log, re.MULTILINE)}


@pytest.mark.slow
def test_a_default_run_imports_no_package_it_does_not_use(synthetic_root, tmp_path):
    done = subprocess.run([sys.executable, "-X", "importtime", "train.py", f"data.root={synthetic_root}", *TINY,
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, env=offline_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = imported_packages(done.stderr)
    assert {"torch", "pytorch_lightning", "hydra", "tensorboard"} <= imported  # the report is read right
    assert sorted(imported & set(NOT_FOR_A_RUN)) == []


@pytest.mark.slow
def test_the_startup_tool_times_a_run_from_its_command_to_its_first_step_and_from_its_last_to_the_prompt(
        synthetic_root, capsys):
    startup.main(["--repeats", "1", f"data.root={synthetic_root}", *TINY, "callbacks=minimal"])
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\| ([a-z ]+) \| ([\d.]+) \| [\d., ]+ \|$", out, re.MULTILINE))
    assert list(rows) == ["import torch", "command to first step", "last step to prompt", "whole command"]
    seconds = {name: float(value) for name, value in rows.items()}
    assert all(value > 0 for value in seconds.values())
    # The two phases lie inside the whole command, and its start-up includes importing torch.
    assert seconds["command to first step"] + seconds["last step to prompt"] <= seconds["whole command"] + 0.01
    assert seconds["command to first step"] > seconds["import torch"]

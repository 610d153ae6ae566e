"""The GPU suite's smoke mode: the same code as on the GPU (the overhead sweep, the time-to-accuracy runs, the
distilled and ResNet targets), on the CPU with synthetic data, writing the same report."""

import json
import subprocess
import sys

import pytest

from .conftest import REPO, offline_env


@pytest.mark.slow
def test_the_gpu_suite_runs_in_smoke_mode_and_writes_its_report(tmp_path):
    result = subprocess.run([sys.executable, "scripts/gpu_suite.py", "--smoke", "--out", str(tmp_path)], cwd=REPO,
                            env=offline_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["smoke"] and report["device"] == "cpu"
    (row,) = report["overhead"]["eager"]
    assert row["batch"] == 64 and row["a2/b"] > 0 and row["a2k1/b"] > 0 and row["steps_per_execution"] >= 1
    assert "skipped" in report["overhead"]["compile=reduce-overhead"]
    runs = report["time_to_accuracy"] + report["targets"]
    assert [run["name"] for run in runs] == ["MNIST to 99%", "Fashion-MNIST to 91%",
                                            "ResNet <= 1M parameters at >= 95.0%", "seed network at >= 94.0%"]
    for run in runs:
        assert "error" not in run, run
        assert 0 <= run["test/acc"] <= 1 and run["wall_s"] > 0 and run["parameters"] > 0
    for run in report["time_to_accuracy"]:
        assert run["reached"] == (run["test/acc"] >= run["target"])
    resnet, seed = report["targets"]
    assert resnet["reached"] == (resnet["test/acc"] >= 0.95 and resnet["parameters"] <= 1_000_000)
    assert seed["reached"] == (seed["test/acc"] >= 0.94)
    assert "| MNIST to 99% |" in (tmp_path / "REPORT.md").read_text()

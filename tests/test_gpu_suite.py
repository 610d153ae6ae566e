"""The GPU suite's smoke mode: the same code as on the GPU (the overhead sweep, the time-to-accuracy runs, the
distilled and ResNet targets), on the CPU with synthetic data, writing the same report. The script runs in process;
its training runs are the `python train.py` processes it starts itself."""

import json
import logging

import pytest

from .conftest import offline_env, run_script

LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch")


@pytest.mark.slow
def test_the_gpu_suite_runs_in_smoke_mode_and_writes_its_report(tmp_path, monkeypatch):
    for name, value in offline_env().items():  # the runs it starts are offline
        monkeypatch.setenv(name, value)
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        result = run_script(monkeypatch, "gpu_suite.py", "--smoke", "--out", str(tmp_path))
    finally:  # the benchmark quiets Lightning's loggers: put back for later tests
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
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
    markdown = (tmp_path / "REPORT.md").read_text()
    assert "| MNIST to 99% |" in markdown
    paired = row["a2/b_paired"]  # one repeat: its one pair is the median and both ends of the range
    assert paired["median"] == paired["low"] == paired["high"] == pytest.approx(row["b_all"][0] / row["a2_all"][0])
    assert f"| 64 | {row['steps_per_execution']} | {row['a2/b']:.2f} | {paired['median']:.2f} (" in markdown

"""scripts/benchmark.py runs for real on tiny data, so it cannot rot: once as a process, otherwise its main in
process. Speeds are never asserted: only the report's structure, that every number is a positive finite value, and
one-line errors for bad input."""

import json
import logging
import math
import re
import statistics
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from mnistlab.tools.benchmark import caveats, main

from .conftest import REPO, offline_env, run_in_process

VARIANTS = ("a", "a2", "b", "c")
ROW = re.compile(r"^\| (a2|a|b|c) \| [^|]+ \| (\d+) \| (32-true|bf16-mixed) \| ([\d.]+) \(([\d.]+)-([\d.]+)\) \| "
                 r"(\d+) \| (\d+) MiB \(([+-]\d+)\) \|$", re.MULTILINE)


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    """`python scripts/benchmark.py ARGS`, the real process."""
    return subprocess.run([sys.executable, "scripts/benchmark.py", *args], cwd=REPO, env=offline_env(),
                          capture_output=True, text=True, timeout=300)


def bench(*args: str) -> subprocess.CompletedProcess:
    """The same command, its main in process; the levels it gives Lightning's loggers are put back."""
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch")]
    levels = [logger.level for logger in loggers]
    try:
        return run_in_process(main, *args)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def table_rows(stdout: str) -> dict[str, tuple[str, ...]]:
    return {match[0]: match[1:] for match in ROW.findall(stdout)}


@pytest.mark.slow
def test_all_variants_report(synthetic_root, tmp_path):
    out = tmp_path / "bench.json"
    result = run_benchmark("--data-root", str(synthetic_root), "--train-images", "600", "--val-size", "200",
                           "--repeats", "1", "--batch-size", "128", "--variants", ",".join(VARIANTS),
                           "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    assert sorted(rows) == sorted(VARIANTS), result.stdout
    default_batch = OmegaConf.load(REPO / "configs" / "data" / "mnist.yaml").batch_size
    assert rows["a"][0] == str(default_batch) and rows["c"][0] == "64" and rows["b"][0] == rows["a2"][0] == "128"
    for name, (_, _, median, low, high, speed, peak, _) in rows.items():
        numbers = [float(median), float(low), float(high), float(speed), float(peak)]
        assert all(math.isfinite(x) and x > 0 for x in numbers), (name, numbers)
    for ratio in ("a/c", "a2/b"):
        assert re.search(rf"^{ratio}\s+= [\d.]+ ", result.stdout, re.MULTILINE), result.stdout
    for package in ("python", "torch", "torchvision", "pytorch-lightning", "hydra-core", "torchmetrics"):
        assert re.search(rf"^versions .*\b{package} \d", result.stdout, re.MULTILINE), package
    assert re.search(r"^machine .*cores.*GPU", result.stdout, re.MULTILINE)
    # 400 images once: the report says its ratios mean little.
    assert "note: the shortest timed epoch took" in result.stdout and "note: 1 repeat(s)" in result.stdout

    report = json.loads(out.read_text())
    assert set(report) == {"machine", "versions", "data", "method", "settings", "results", "ratios"}
    assert set(report["results"]) == set(VARIANTS) and set(report["ratios"]) == {"a/c", "a2/b"}
    assert report["data"] == {"source": str(synthetic_root), "train_images": 400, "val_images": 200,
                              "epoch": "400 training images, 200 validation"}
    for result in report["results"].values():
        assert len(result["epoch_seconds"]) == 1 and 0 < result["train_images"] <= 400
        assert result["peak_memory_bytes"] > 0 and math.isfinite(result["train_images_per_second"])


@pytest.mark.slow
def test_synthetic_data_repeats_and_profile():
    """Without --data-root: synthetic data; a variant subset in the order asked; the profiler over a."""
    result = bench("--train-images", "400", "--val-size", "100", "--repeats", "2", "--variants", "c,b", "--profile")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(table_rows(result.stdout)) == ["b", "c"]
    assert result.stdout.count("repeat 2/2") == 2
    assert "synthetic" in result.stdout and "a/c" not in result.stdout and "a2/b" not in result.stdout
    assert re.search(r"^profile of a.*\n-+.*\n +Name .*Self CPU", result.stdout, re.MULTILINE)


@pytest.mark.parametrize(("args", "expected"), [
    (["--data-root", "{empty}"], "{empty}: no MNIST-style data there"),
    (["--variants", "a,x"], "--variants=a,x: choose from a, a2, b, c"),
    (["--batch-sizes", "64,0"], "--batch-sizes=64,0: give batch sizes >= 1 separated by commas, e.g. 64,128,256,512"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, expected):
    """In-process: these fail before any config is composed (which would leave Hydra's global state set)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(empty=empty) for a in args])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert expected.format(empty=empty) in stderr


@pytest.mark.parametrize(("args", "expected"), [
    (["--val-size", "100", "trainer.max_epochs=1"],
     "error: trainer.max_epochs=1: the benchmark times epoch 2 of a run, so it must be >= 2\n"),
    (["data.val_size=0"],  # a training run may skip validation; the benchmark's runs do not
     "error: data.val_size=0 must be between 1 and 399 here: the benchmark times epochs with validation "
     "(--val-size N sets it)\n"),
])
def test_a_run_the_benchmark_cannot_time_is_one_line(synthetic_root, args, expected):
    result = bench("--data-root", str(synthetic_root), "--train-images", "400", "--variants", "a", *args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr == expected


def test_caveats_name_short_epochs_few_repeats_and_a_busy_machine():
    def report(seconds: dict[str, list[float]]) -> dict:
        results = {name: {"epoch_seconds": s, "epoch_seconds_median": sorted(s)[len(s) // 2]}
                   for name, s in seconds.items()}
        return {"results": results, "ratios": {"a2/b": 0.9}, "method": {"repeats": len(seconds["b"])}}

    assert caveats(report({"a2": [5.0, 5.1, 5.2], "b": [4.5, 4.5, 4.6]})) == []
    short, few = caveats(report({"a2": [0.5], "b": [0.4]}))
    assert short.startswith("the shortest timed epoch took 0.40 s") and few.startswith("1 repeat(s)")
    (busy,) = caveats(report({"a2": [5.0, 6.0, 5.1], "b": [4.5, 4.5, 4.6]}))
    assert busy.startswith("the repeats of a2 spread 20% of their median")


@pytest.mark.slow
def test_a_batch_size_sweep_reports_the_overhead_per_step(synthetic_root, tmp_path):
    out = tmp_path / "sweep.json"
    result = bench("--data-root", str(synthetic_root), "--train-images", "600", "--val-size", "200", "--repeats", "2",
                   "--batch-sizes", "64,128", "--json", str(out), "data.steps_per_execution=2")
    assert result.returncode == 0, result.stderr[-3000:]
    cell = r"([\d.]+) \(([\d.]+)-([\d.]+)\)"
    rows = re.findall(rf"^\| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([+-][\d.]+) \| {cell} \| {cell} \| "
                      rf"{cell} \|$", result.stdout, re.MULTILINE)
    assert [(batch, steps) for batch, steps, *_ in rows] == [("64", "6"), ("128", "3")]  # 400 images // batch
    report = json.loads(out.read_text())
    for row, printed in zip(report["batch_sweep"], rows, strict=True):
        assert row["a2/b"] == pytest.approx(row["b_seconds"] / row["a2_seconds"])
        overhead = 1000 * (row["a2_seconds"] - row["b_seconds"]) / row["steps"]
        assert row["overhead_ms_per_step"] == pytest.approx(overhead)
        # The paired ratio: b over a2 within each repeat, their median (of two: the mean) and range.
        each = sorted(b / a2 for a2, b in zip(row["a2_all"], row["b_all"], strict=True))
        assert row["a2/b_paired"] == pytest.approx({"median": sum(each) / 2, "low": each[0], "high": each[1]})
        assert [float(cell) for cell in printed[6:9]] == pytest.approx(
            [row["a2/b_paired"][key] for key in ("median", "low", "high")], abs=0.006)
        # The training steps alone: inside each epoch, and their paired ratio printed beside.
        for name in ("a2", "a2k1", "b"):
            assert all(0 < steps < epoch for steps, epoch in zip(row[f"{name}_steps_all"], row[f"{name}_all"],
                                                                 strict=True)), name
        steps = sorted(b / a2 for a2, b in zip(row["a2_steps_all"], row["b_steps_all"], strict=True))
        assert row["a2/b_steps_paired"]["low"] == pytest.approx(steps[0])
        assert [float(cell) for cell in printed[9:12]] == pytest.approx(
            [row["a2/b_steps_paired"][key] for key in ("median", "low", "high")], abs=0.006)
        # Interleaved: every optimizer step of one more fit's timed epoch, in groups of 2, each against as many
        # plain-loop steps run right after it.
        assert row["steps_per_execution"] == 2 and row["interleaved_steps"] == row["steps"]
        assert row["interleaved_groups"] == len(row["interleaved_a2_all"]) == math.ceil(row["steps"] / 2)
        each = [b / a2 for a2, b in zip(row["interleaved_a2_all"], row["interleaved_b_all"], strict=True)]
        assert row["a2/b_interleaved"] == pytest.approx({"median": statistics.median(each), "low": min(each),
                                                         "high": max(each)})
        assert row["a2/b_interleaved_total"] == pytest.approx(sum(row["interleaved_b_all"]) /
                                                              sum(row["interleaved_a2_all"]))
        assert [float(cell) for cell in printed[12:]] == pytest.approx(
            [row["a2/b_interleaved"][key] for key in ("median", "low", "high")], abs=0.006)
    assert "note: the shortest timed epoch took" in result.stdout  # 400 images: the figures mean little, and it says so


@pytest.mark.slow
def test_a_segmentation_run_is_timed_against_a_plain_loop_of_canvases(synthetic_root, tmp_path):
    out = tmp_path / "canvases.json"
    result = bench("--data-root", str(synthetic_root), "--train-images", "600", "--val-size", "200", "--repeats", "1",
                   "--batch-sizes", "32", "--json", str(out), "task=segmentation", "data.train_canvases=128",
                   "data.val_canvases=32", "data.test_canvases=32")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "128 training canvases an epoch, composed per batch; validation on 32 fixed canvases" in result.stdout
    (row,) = json.loads(out.read_text())["batch_sweep"]
    assert row["steps"] == 4 and all(t > 0 for t in (row["a2_seconds"], row["b_seconds"]))  # 128 canvases // 32


@pytest.mark.slow
def test_whole_runs_time_train_py_and_the_plain_loop_in_fresh_processes(synthetic_root, capsys):
    from mnistlab.tools.whole_runs import main as whole_runs

    whole_runs(["--data", "mnist", "--data-root", str(synthetic_root), "--batch-sizes", "64", "--repeats", "1",
                "--precision", "32-true", "data.val_size=200", "callbacks=minimal"])
    table = capsys.readouterr().out.splitlines()
    assert table[2].startswith("| batch | mnistlab epoch s | plain epoch s | ratio |")
    batch, *figures = (cell.strip() for cell in table[4].strip("|").split("|"))
    assert batch == "64" and len(figures) == 5
    mnistlab_epoch, plain_epoch, ratio, mnistlab_run, plain_run = map(float, figures)
    assert mnistlab_run > 0 and plain_run > 0 and math.isfinite(mnistlab_epoch) and math.isfinite(plain_epoch)
    if mnistlab_epoch >= 0.1:  # the figures are printed to 0.01 s: the ratio of tiny epochs is only that exact
        rounding = 0.005 * (1 + abs(ratio)) / mnistlab_epoch + 0.005
        assert abs(ratio - plain_epoch / mnistlab_epoch) <= rounding

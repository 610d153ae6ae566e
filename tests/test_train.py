"""End to end: the real `python train.py` and `mnistlab-train` in subprocesses, on synthetic IDX files."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import FAST, REPO, offline_env, run_train


def test_train_py_with_an_experiment_fits_tests_and_writes_metrics(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    result = run_train("+experiment=baseline", f"data.root={synthetic_root}", f"hydra.run.dir={run_dir}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"test/acc", "test/loss", "val/acc_best", "epochs", "seconds", "best_checkpoint"}
    assert metrics["epochs"] == 2
    assert metrics["test/acc"] > 0.9, metrics  # the synthetic classes are easy: far above chance (0.1)
    assert 0 < metrics["test/loss"] < 1 and 0.9 < metrics["val/acc_best"] <= 1
    assert metrics["seconds"] > 0
    best = Path(metrics["best_checkpoint"])
    assert best.parent == run_dir / "checkpoints" and best.is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    # The summary names the accuracy, the run folder, the checkpoint and the TensorBoard command.
    assert f"test accuracy {metrics['test/acc']:.4f}" in result.stdout
    for line in (f"run folder    {run_dir}", f"checkpoint    {best}", "tensorboard   tensorboard --logdir"):
        assert line in result.stdout

    # The TensorBoard events hold every stage's metrics, read back with TensorBoard's own reader.
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert tags >= {"train/loss_step", "train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/acc_best",
                    "test/loss", "test/acc"}
    assert [e.step for e in events.Scalars("val/acc")] == sorted(e.step for e in events.Scalars("val/acc"))
    assert len(events.Scalars("val/acc")) == 2
    assert events.Scalars("test/acc")[-1].value == metrics["test/acc"]
    assert max(e.value for e in events.Scalars("val/acc")) == metrics["val/acc_best"]


def test_missing_data_offline_ends_in_one_actionable_line(tmp_path):
    empty = tmp_path / "empty"
    result = run_train(f"data.root={empty}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no mnist data in {empty} or {empty / 'MNIST' / 'raw'}: expected ")
    assert "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in last
    assert "the download failed" in last and "data.root=PATH" in last


def test_console_script_finds_the_configs_from_any_folder(tmp_path):
    script = Path(sys.executable).with_name("mnistlab-train")
    assert script.is_file(), "install the package first: pip install -e '.[dev]'"
    result = subprocess.run([str(script), "+experiment=baseline", "--cfg", "job"], cwd=tmp_path,
                            capture_output=True, text=True, env=offline_env())
    assert result.returncode == 0, result.stderr
    assert "name: baseline" in result.stdout and "_target_: mnistlab.model.SeedNet" in result.stdout


def test_the_wheel_ships_the_configs_and_uses_them(tmp_path):
    """A plain (non-editable) install must find its configs inside the package, not in a checkout."""
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("mnistlab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"mnistlab/configs/train.yaml", "mnistlab/configs/experiment/baseline.yaml"} <= set(names)

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    result = subprocess.run([sys.executable, "-c", "import mnistlab.train as t; print(t.CONFIG_DIR); t.main()",
                             "+experiment=baseline", "--cfg", "job"], cwd=tmp_path, capture_output=True,
                            text=True, env={**offline_env(), "PYTHONPATH": str(target)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(target / "mnistlab" / "configs")
    assert "name: baseline" in result.stdout


def test_a_corrupt_data_folder_ends_in_one_line_naming_the_file(tmp_path, synthetic_root):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in synthetic_root.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    images = broken / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[: len(images.read_bytes()) // 2])  # cut off mid-stream
    result = run_train(f"data.root={broken}", f"hydra.run.dir={tmp_path / 'run'}", *FAST)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot read {images}: ")
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, so trainer=gpu builds")
def test_a_trainer_the_machine_cannot_build_is_one_line(tmp_path, synthetic_root):
    result = run_train("trainer=gpu", f"data.root={synthetic_root}", f"hydra.run.dir={tmp_path / 'run'}", *FAST)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: Error in call to target 'pytorch_lightning.trainer.trainer.Trainer': "
        "MisconfigurationException('No supported gpu backend found!') full_key: trainer")


def test_compile_trains_the_compiled_network_and_saves_plain_checkpoints(tmp_path, synthetic_root):
    """compile=true on the CPU: the run completes with the default callbacks (the graph trace included), learns, and its
    checkpoint has the plain network's keys, so eval, predict, export and transfer load it unchanged."""
    run_dir = tmp_path / "run"
    result = run_train(f"data.root={synthetic_root}", f"hydra.run.dir={run_dir}", *FAST, "compile=true",
                       "trainer.precision=32-true", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.9, metrics
    state = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert {"net.conv1.weight", "net.fc2.bias"} <= set(state) and not any("_orig_mod" in k for k in state)

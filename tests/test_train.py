"""End to end on synthetic IDX files: the real `python train.py` and `mnistlab-train` in subprocesses where what
the process prints or installs is tested, train() and main() in process elsewhere."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnistlab.tasks.registry import load_datamodule, load_task

from .conftest import FAST, REPO, offline_env, run_train, train_in_process, train_main


@pytest.mark.slow
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
    assert (f"test/acc {metrics['test/acc']:.4f}  test/loss {metrics['test/loss']:.4f}  val/acc_best "
            f"{metrics['val/acc_best']:.4f}  (2 epochs, ") in result.stdout
    for line in (f"run folder    {run_dir}", f"checkpoint    {best}", "tensorboard   tensorboard --logdir"):
        assert line in result.stdout

    # A quiet start: one line on what runs and where it writes, then the progress bar. Lightning's banners and
    # tips go to train.log, with mnistlab's own lines.
    lines = result.stdout.splitlines()
    before = lines[:next(i for i, line in enumerate(lines) if line.startswith(("Sanity Checking", "Epoch 0")))]
    assert len(before) <= 8 and before[0].startswith("SeedNet (") and before[0].endswith(f"writing to {run_dir}")
    for noise in ("GPU available", "Tip:", "Seed set", "Loading `train_dataloader`", "Test metric"):
        assert noise not in result.stdout + result.stderr
    log = (run_dir / "train.log").read_text()
    assert "GPU available" in log and f"run folder    {run_dir}" in log

    # The TensorBoard events hold every stage's metrics, read back with TensorBoard's own reader.
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert tags >= {"train/loss_step", "train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/acc_best",
                    "test/loss", "test/acc"}
    assert [e.step for e in events.Scalars("val/acc")] == sorted(e.step for e in events.Scalars("val/acc"))
    assert len(events.Scalars("val/acc")) == 2
    assert events.Scalars("test/acc")[-1].value == metrics["test/acc"]
    assert max(e.value for e in events.Scalars("val/acc")) == metrics["val/acc_best"]


def checkpoint_test_accuracy(checkpoint: Path) -> float:
    """A checkpoint's accuracy on its own test set, computed here in fp32, apart from the run that saved it."""
    module = load_task(checkpoint, "ckpt_path").eval()
    data = load_datamodule(checkpoint, {})
    data.setup("test")
    with torch.no_grad():
        correct = sum(int((module(x).argmax(1) == y).sum()) for x, y in data.test_dataloader())
    return correct / len(data.splits["test"][1])


@pytest.mark.slow
def test_val_size_0_trains_on_every_image_and_tests_the_last_epochs_averaged_weights(tmp_path, synthetic_root):
    """The final fit once a recipe is chosen: no validation, the last epoch's checkpoint (the EMA weights) is the
    one tested, and the views that need no validation split still run."""
    run_dir = tmp_path / "run"
    result = run_train("+experiment=ema", f"data.root={synthetic_root}", f"hydra.run.dir={run_dir}", *FAST,
                       "data.val_size=0", "callbacks.embedding.num_images=16",
                       "trainer.check_val_every_n_epoch=2")  # which alone would hold every checkpoint back
    assert result.returncode == 0, result.stderr[-3000:]
    assert "could not find the monitored key" not in result.stderr

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val/acc_best"] is None  # null: nothing was validated
    assert metrics["test/acc"] > 0.2, metrics  # above chance; EMA at decay 0.999 over 36 steps is still young
    assert "no validation split" in result.stdout
    last_epoch = run_dir / "checkpoints" / "epoch001.ckpt"
    assert metrics["best_checkpoint"] == str(last_epoch) and (run_dir / "checkpoints" / "last.ckpt").is_file()
    checkpoint = torch.load(last_epoch, map_location="cpu", weights_only=True)
    assert "current_model_state" in checkpoint  # Lightning's weight averaging: state_dict holds the average
    assert checkpoint["datamodule_hyper_parameters"]["val_size"] == 0

    # The tested weights are that checkpoint's: its test accuracy, recomputed here, is the one reported.
    assert checkpoint_test_accuracy(last_epoch) == pytest.approx(metrics["test/acc"], abs=1e-6)

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/acc", "test/acc"} <= tags and not any(tag.startswith("val/") for tag in tags)
    assert len(events.Scalars("train/acc")) == 2
    images = events.Tags()["images"]
    assert "filters/backbone.conv1" in images and "feature_maps/backbone.conv1" not in images
    metadata = next((run_dir / "tensorboard").rglob("metadata.tsv")).read_text().splitlines()
    assert len(metadata) == 16  # the embedding, of training images


@pytest.mark.slow
def test_swa_tests_and_saves_the_average_of_the_epochs_weights(tmp_path, synthetic_root):
    """Lightning's SWA adds the weights to its average at the start of each epoch from swa_epoch_start - 1 on
    (here, the weights after epochs 0, 1 and 2) and puts the average into the model only when training ends:
    that is what is tested."""
    run_dir = tmp_path / "run"
    train_in_process(run_dir, "+experiment=baseline", "callbacks=swa", f"data.root={synthetic_root}", *FAST,
                     "trainer.max_epochs=4", "callbacks.swa.swa_epoch_start=2",
                     "callbacks.model_checkpoint.save_top_k=-1")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    swa = run_dir / "checkpoints" / "swa.ckpt"
    assert metrics["best_checkpoint"] == str(swa)

    def weights(name: str) -> dict:
        state = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)["state_dict"]
        return {key: value for key, value in state.items() if key.startswith("net.")}

    averaged, epochs = weights("swa.ckpt"), [weights(f"epoch{epoch:03d}.ckpt") for epoch in range(3)]
    for key, value in averaged.items():
        torch.testing.assert_close(value, sum(epoch[key] for epoch in epochs) / 3)

    assert checkpoint_test_accuracy(swa) == pytest.approx(metrics["test/acc"], abs=1e-6)


@pytest.mark.slow
def test_missing_data_offline_ends_in_one_actionable_line(tmp_path):
    empty = tmp_path / "empty"
    result = run_train(f"data.root={empty}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no mnist data in {empty} or {empty / 'MNIST' / 'raw'}: expected ")
    assert "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in last
    assert "the download failed" in last and "data.root=PATH" in last


@pytest.mark.slow
def test_console_script_finds_the_configs_from_any_folder(tmp_path):
    script = Path(sys.executable).with_name("mnistlab-train")
    assert script.is_file(), "install the package first: pip install -e '.[dev]'"
    result = subprocess.run([str(script), "+experiment=baseline", "--cfg", "job"], cwd=tmp_path,
                            capture_output=True, text=True, env=offline_env())
    assert result.returncode == 0, result.stderr
    assert "name: baseline" in result.stdout and "_target_: mnistlab.models.SeedNet" in result.stdout


@pytest.mark.slow
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


def test_a_corrupt_data_folder_ends_in_one_line_naming_the_file(tmp_path, synthetic_root, monkeypatch):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in synthetic_root.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    images = broken / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[: len(images.read_bytes()) // 2])  # cut off mid-stream
    result = train_main(monkeypatch, f"data.root={broken}", f"hydra.run.dir={tmp_path / 'run'}", *FAST)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot read {images}: ")
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, so trainer=gpu builds")
def test_a_trainer_the_machine_cannot_build_is_one_line(tmp_path, synthetic_root, monkeypatch):
    result = train_main(monkeypatch, "trainer=gpu", f"data.root={synthetic_root}", f"hydra.run.dir={tmp_path / 'run'}",
                        *FAST)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: Error in call to target 'pytorch_lightning.trainer.trainer.Trainer': "
        "MisconfigurationException('No supported gpu backend found!') full_key: trainer")


@pytest.mark.slow
@pytest.mark.timeout(900)  # compiling on a CPU takes minutes on a busy machine
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
    assert {"net.backbone.conv1.weight", "net.head.fc2.bias"} <= set(state) and not any("_orig_mod" in k for k in state)

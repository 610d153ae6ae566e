"""Recipes that hold on small data: train_size, a warmup with a floor in steps, an EMA whose decay warms up, and
the stop for a run that is not learning."""

import math
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from PIL import Image
from pytorch_lightning.callbacks import Callback

from mnistlab import schedules
from mnistlab.callbacks.averaging import EMA
from mnistlab.config import compose_run_config
from mnistlab.errors import ConfigError, NotLearningError

from .conftest import FAST, REPO, RecordWeights, classifier, configured, offline_env, train_main

MODEL = {"_target_": "mnistlab.models.SeedNet", "num_classes": 10}
SGD = {"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9}


def test_train_size_keeps_the_first_images_and_the_same_validation(synthetic_root):
    whole = configured("data", root=str(synthetic_root), val_size=200, download=False)
    part = configured("data", root=str(synthetic_root), val_size=200, train_size=300, download=False)
    whole.setup("fit")
    part.setup("fit")
    assert len(whole.splits["train"][1]) == 1000 and len(part.splits["train"][1]) == 300
    assert torch.equal(part.splits["train"][0], whole.splits["train"][0][:300])
    assert torch.equal(part.splits["val"][0], whole.splits["val"][0])
    assert torch.equal(part.splits["test"][1], whole.splits["test"][1])


def test_train_size_beyond_what_validation_leaves_is_one_line(synthetic_root):
    data = configured("data", root=str(synthetic_root), val_size=200, train_size=1001, download=False)
    with pytest.raises(ConfigError, match=r"data.train_size=1001 must be between 1 and 1000: that many training "
                                          r"images remain after the validation slice \(data.val_size=200\)"):
        data.setup("fit")


@pytest.mark.parametrize(("epochs", "total", "per_epoch", "floor", "expected"), [
    (0.5, 2150, 215, 100, 108),  # Fashion-MNIST at batch 256: half an epoch is longer than the floor
    (0.5, 540, 18, 100, 100),    # 9,000 images: the floor
    (0.5, 60, 20, 100, 15),      # a 60-step run: a quarter of it
    (0.5, 60, 20, 0, 10),        # no floor: half an epoch
    (0, 60, 20, 100, 0),         # no warmup stays none
])
def test_warmup_lasts_at_least_its_floor_in_steps_or_a_quarter_of_the_run(epochs, total, per_epoch, floor,
                                                                          expected):
    assert schedules.warmup_steps(epochs, total, per_epoch, floor) == expected


def test_the_cosine_schedule_warms_up_over_the_floor():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedule = schedules.cosine(optimizer, 540, 18, warmup_epochs=0.5, warmup_start_factor=0.01, warmup_min_steps=100)
    lrs = []
    for _ in range(101):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert math.isclose(lrs[50], 0.1 * (0.01 + 0.99 * 50 / 100)) and math.isclose(lrs[100], 0.1)


def test_ema_decay_warms_up_and_reaches_its_cap():
    ema = EMA(decay=0.999, warmup=10)
    assert ema.decay_at(0) == 0.1 and math.isclose(ema.decay_at(90), 0.91)
    assert ema.decay_at(9000) == 0.999 and ema.decay_at(100_000) == 0.999


def test_ema_weights_follow_the_warmed_up_recurrence(synthetic_root):
    module = classifier(MODEL, SGD, {})
    record, ema = RecordWeights(), EMA(decay=0.95, warmup=4)
    # One optimizer step per Lightning step: the recording callback sees every step's weights.
    data = configured("data", root=str(synthetic_root), val_size=200, batch_size=50, download=False,
                      steps_per_execution=1)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=8, limit_val_batches=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         callbacks=[record, ema])
    trainer.fit(module, datamodule=data)
    average = record.after_step[0]  # the first update copies the weights
    for t, weights in enumerate(record.after_step[1:], start=1):
        decay = min(0.95, (1 + t) / (4 + t))
        average = decay * average + (1 - decay) * weights
    assert len(record.after_step) == 8
    assert torch.allclose(module.net.head.fc2.weight, average, atol=1e-6)  # training ends on the averaged weights
    assert not torch.allclose(module.net.head.fc2.weight, record.after_step[-1])


@pytest.mark.parametrize(("setting", "says"), [
    (dict(decay=1.0), "callbacks.ema.decay=1.0 must be in [0, 1)"),
    (dict(warmup=0.5), "callbacks.ema.warmup=0.5 must be >= 1 (1: no warmup)"),
])
def test_bad_ema_settings_are_one_line(setting, says):
    with pytest.raises(ConfigError) as info:
        configured("callbacks.ema", "callbacks=ema", **setting)
    assert str(info.value) == says


class ConstantLoss(Callback):
    """Stands in for training_step's loss after it is computed: what the stop reads."""

    def __init__(self, value: float):
        self.value = value

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        outputs["loss"] = torch.tensor(self.value)


def fit_with_stop(synthetic_root, loss: float | None, epochs: int = 2, min_steps: int = 30):
    # One optimizer step per Lightning step: ConstantLoss sets every step's loss.
    data = configured("data", root=str(synthetic_root), val_size=200, batch_size=50, download=False,
                      steps_per_execution=1)
    stop = configured("callbacks.not_learning", num_classes=10, min_steps=min_steps)
    before = [ConstantLoss(loss)] if loss is not None else []
    torch.manual_seed(0)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, callbacks=[*before, stop])
    trainer.fit(classifier(MODEL, {**SGD, "lr": 0.02}, {}), datamodule=data)
    return stop, trainer


def test_not_learning_stop_fires_at_chance_loss_after_the_first_epoch(synthetic_root):
    with pytest.raises(NotLearningError) as info:
        fit_with_stop(synthetic_root, loss=math.log(10))
    # 1000 images in batches of 50: the first epoch is 20 steps, below the floor of 30 steps.
    assert str(info.value).startswith("not learning: the training loss is 2.303 after 30 steps, the 2.303 (ln 10)")
    assert "lower optimizer.lr" in str(info.value)


def test_not_learning_stop_does_not_judge_a_run_shorter_than_its_floor(synthetic_root):
    stop, trainer = fit_with_stop(synthetic_root, loss=math.log(10), epochs=2, min_steps=41)
    assert trainer.global_step == 40 and stop.check_step == 41


def test_not_learning_stop_fires_on_a_loss_above_chance(synthetic_root):
    with pytest.raises(NotLearningError, match=r"the training loss is 2\.600 after 30 steps"):
        fit_with_stop(synthetic_root, loss=2.6)


@pytest.mark.slow
def test_not_learning_stop_stays_quiet_on_a_loss_that_moved_and_on_real_training(synthetic_root):
    stop, trainer = fit_with_stop(synthetic_root, loss=2.2)
    assert trainer.current_epoch == 2 and stop.check_step == 30
    stop, trainer = fit_with_stop(synthetic_root, loss=None)  # the real loss of a learning network
    assert trainer.current_epoch == 2


@pytest.mark.slow
def test_a_dead_run_ends_in_one_line_naming_the_cure(tmp_path, synthetic_root, monkeypatch):
    """A learning rate that kills every ReLU in the first steps: the run stops after its first epoch."""
    run_dir = tmp_path / "run"
    result = train_main(monkeypatch, f"data.root={synthetic_root}", f"hydra.run.dir={run_dir}", "callbacks=minimal",
                        *FAST, "trainer.max_epochs=4", "optimizer.lr=1", "scheduler.warmup_epochs=0",
                        "callbacks.not_learning.min_steps=10")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: not learning: the training loss is 2."), result.stderr
    assert not (run_dir / "metrics.json").exists()


def test_augment_recipe_is_chosen_per_dataset():
    digits = compose_run_config(["+experiment=bag_of_tricks"])
    clothes = compose_run_config(["+experiment=bag_of_tricks", "data=fashion_mnist"])
    assert digits.data.augment == clothes.data.augment == "recipe"
    digit_data, clothes_data = instantiate(digits.data), instantiate(clothes.data)
    affine = digit_data.augment[0]
    assert (affine.degrees, affine.translate, affine.scale, affine.hflip) == (10, 0.1, 0.1, 0)  # no mirrored digits
    assert clothes_data.augment is None


def test_the_mnist_recipe_is_bag_of_tricks_as_a_30_epoch_final_fit():
    cfg = compose_run_config(["+experiment=mnist_best"])
    assert (cfg.trainer.max_epochs, cfg.data.val_size, cfg.data.augment) == (30, 0, "recipe")
    assert cfg.model.batch_norm
    assert "ema" in cfg.callbacks


def test_an_unknown_augment_name_is_one_line():
    with pytest.raises(ConfigError, match=r"data.augment='recipes': give null, recipe \(data.recipe_augment\) or "):
        configured("data", augment="recipes")


@pytest.mark.slow
def test_learning_curve_script_runs_each_size_over_seeds_and_plots(tmp_path, synthetic_root):
    out = tmp_path / "curve"
    result = subprocess.run([sys.executable, "scripts/learning_curve.py", "--sizes", "300,600", "--seeds", "2",
                             "--out", str(out), "--", f"data.root={synthetic_root}", *FAST, "trainer.max_epochs=1",
                             "callbacks=minimal"], cwd=REPO, env=offline_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (out / "learning_curve.md").read_text().splitlines()[2:]
    assert [row.split(" | ")[:3] for row in rows] == [["| 300", "2", "0"], ["| 600", "2", "0"]]
    for row in rows:
        low, median, high = (float(v) for v in row.split(" | ")[3].split(" / "))
        assert 0 <= low <= median <= high <= 100
    with Image.open(out / "learning_curve.png") as png:
        assert png.width > 300 and png.height > 200


@pytest.mark.slow
def test_recipes_script_tables_each_recipe_at_each_budget(tmp_path, synthetic_root):
    out = tmp_path / "recipes"
    result = subprocess.run([sys.executable, "scripts/recipes.py", "--epochs", "1", "--seeds", "1", "--out", str(out),
                             "--", f"data.root={synthetic_root}", *FAST, "trainer.limit_train_batches=4"],
                            cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    header, _, row = (out / "recipes.md").read_text().splitlines()
    assert header.startswith("| epochs | baseline | bag_of_tricks | bag_of_tricks without EMA |")
    cells = row.split(" | ")
    assert cells[0] == "| 1" and cells[-1] == "0 |"  # no failed job
    for cell in cells[1:4]:
        assert 0 <= float(cell.split(" ± ")[0]) <= 100

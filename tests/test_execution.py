"""Several optimizer steps per Lightning step (data.steps_per_execution): the same weights at any K, the step
counts that a group must divide, and the loader's groups."""

import math
from pathlib import Path
from typing import ClassVar

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnistlab.errors import ConfigError
from mnistlab.execution import StepGroup, auto_steps_per_execution, grouped, resolve_steps_per_execution

from .conftest import FAST, configured, train_in_process

# fp32 on the CPU, logging every 4 steps (mid-group at K=8), 15 steps an epoch on the synthetic set.
EXACT = [*FAST, "trainer.precision=32-true", "trainer.log_every_n_steps=4", "trainer.accelerator=cpu"]


def net_weights(checkpoint) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {name: tensor for name, tensor in state.items() if name.startswith("net.")}


def assert_same_weights(first, second) -> None:
    a, b = net_weights(first), net_weights(second)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), rtol=0, atol=1e-6), name


def train_at(tmp_path, name: str, steps: int, *overrides: str) -> dict:
    folder = tmp_path / name
    metrics = train_in_process(folder, *EXACT, f"data.steps_per_execution={steps}", *overrides)
    return metrics | {"folder": folder}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [
    [],  # the default run
    ["+experiment=bag_of_tricks", "trainer.max_epochs=2", "tricks.mixup_alpha=0.2", "trainer.gradient_clip_val=0.5"],
    # Every block kind (the stem, a widening stage, two ResNet-D downsamplings), at the smallest widths.
    ["+experiment=resnet_bag_of_tricks", "trainer.max_epochs=2", "model.widths=[4,8,16]", "model.blocks=[1,1,1]"],
], ids=["default", "bag_of_tricks+mixup+clipping", "resnet_bag_of_tricks"])
def test_eight_steps_per_execution_give_the_weights_of_one(recipe, tmp_path, synthetic_root):
    one = train_at(tmp_path, "k1", 1, f"data.root={synthetic_root}", *recipe)
    eight = train_at(tmp_path, "k8", 8, f"data.root={synthetic_root}", *recipe)
    assert one["epochs"] == eight["epochs"] == 2
    for run in (one, eight):  # last.ckpt is the last epoch's, also where validation stopped improving
        assert torch.load(run["folder"] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30
    assert_same_weights(one["folder"] / "checkpoints" / "last.ckpt", eight["folder"] / "checkpoints" / "last.ckpt")
    assert one["test/acc"] == eight["test/acc"] and one["val/acc_best"] == eight["val/acc_best"]
    # The logged curves count optimizer steps at any K: the same steps, the same values.
    curves = [EventAccumulator(str(run["folder"] / "tensorboard")).Reload() for run in (one, eight)]
    rates = [tag for tag in curves[0].Tags()["scalars"] if tag.startswith("lr-")]  # lr-SGD, or one per group
    assert rates and set(rates) <= set(curves[1].Tags()["scalars"])
    for tag in ["train/loss_step", *rates]:
        points = [[(e.step, round(e.value, 5)) for e in events.Scalars(tag)] for events in curves]
        assert points[0] == points[1] and len(points[0]) >= 3, (tag, points)


class AutocastProbe(pl.Callback):
    """Notes whether autocast is on where the backward starts and where the optimizer step begins."""

    seen: ClassVar[list[tuple[str, bool]]] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.seen.append(("backward", torch.is_autocast_enabled("cpu")))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.seen.append(("step", torch.is_autocast_enabled("cpu")))


def test_eight_steps_per_execution_under_bf16_autocast_give_the_weights_of_one(tmp_path, synthetic_root):
    """Lightning's autocast spans the whole group: each step must compute with the weights the previous step left,
    so autocast's cache of bf16 weight copies, which lasts as long as the context, must stay off. The backward and
    the optimizer step run outside autocast, as automatic optimization runs them."""
    bf16 = [f"data.root={synthetic_root}", "trainer.precision=bf16-mixed"]
    AutocastProbe.seen.clear()
    one = train_at(tmp_path, "k1", 1, *bf16)
    eight = train_at(tmp_path, "k8", 8, *bf16, "+callbacks.probe._target_=tests.test_execution.AutocastProbe")
    assert_same_weights(one["folder"] / "checkpoints" / "last.ckpt", eight["folder"] / "checkpoints" / "last.ckpt")
    assert one["test/acc"] == eight["test/acc"]
    assert len(AutocastProbe.seen) == 2 * 30 and not any(on for _, on in AutocastProbe.seen)  # 2 epochs of 15 steps


class SaveMidEpoch(pl.Callback):
    """Saves checkpoints/mid.ckpt after the first group of epoch 1: mid-epoch, as a SLURM requeue or a kill
    between two groups leaves it."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 1 and batch_idx == 0:
            trainer.save_checkpoint(Path(trainer.default_root_dir) / "mid.ckpt")


@pytest.mark.slow
def test_a_run_resumed_mid_epoch_at_eight_steps_ends_with_the_uninterrupted_weights(tmp_path, synthetic_root):
    """Resuming from a checkpoint saved after the first group of epoch 1 skips the batches that epoch already ran
    and draws (augmentation, mixup) what the uninterrupted run drew."""
    recipe = ["+callbacks.mid._target_=tests.test_execution.SaveMidEpoch", "+experiment=bag_of_tricks",
              "trainer.max_epochs=3", "tricks.mixup_alpha=0.2", "data.augment={degrees: 10}",
              f"data.root={synthetic_root}"]
    whole = train_at(tmp_path, "whole", 8, *recipe)
    mid_epoch = whole["folder"] / "mid.ckpt"
    saved = torch.load(mid_epoch, weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (1, 23)  # epoch 1 holds steps 15-29
    resumed = train_at(tmp_path, "resumed", 8, *recipe, f"ckpt_path={mid_epoch}")
    assert_same_weights(whole["folder"] / "checkpoints" / "last.ckpt", resumed["folder"] / "checkpoints" / "last.ckpt")
    assert resumed["test/acc"] == whole["test/acc"]


def test_a_group_makes_each_batch_when_the_task_reaches_it():
    made = []

    def batches(start):
        for index in range(start, 10):
            made.append(index)
            yield torch.zeros(2), torch.full((2,), index)

    groups = grouped(batches, 10, 4, done=lambda: 0)
    first = next(groups)
    assert len(first) == 4 and made == []  # nothing drawn before the task asks
    assert first.first()[1][0] == 0 and made == [0]
    assert [int(y[0]) for _, y in first] == [0, 1, 2, 3] and first.images == 8
    assert [len(group) for group in groups] == [4, 2]
    # A resumed epoch starts after the groups it already ran.
    made.clear()
    assert [[int(y[0]) for _, y in group] for group in grouped(batches, 10, 4, done=lambda: 2)] == [[8, 9]]
    assert made == [8, 9]


def test_the_training_loader_cuts_groups_and_counts_its_limit_in_batches(synthetic_root):
    data = configured("data", root=str(synthetic_root), val_size=200, batch_size=64, download=False)
    data.setup()
    loader = data._batches("train", 64, shuffle=True, steps_per_execution=4, limit=7)
    assert loader.num_batches() == 7 and len(loader) == 2
    groups = list(loader)
    assert all(isinstance(group, StepGroup) for group in groups) and [len(g) for g in groups] == [4, 3]
    sizes = [len(y) for group in groups for _, y in group]
    assert sizes == [64] * 7
    plain = data.val_dataloader()
    assert isinstance(next(iter(plain)), tuple)  # evaluation batches are not grouped


class FakeTrainer:
    def __init__(self, device="cpu", val_check_interval=1.0, callbacks=()):
        self.strategy = type("Strategy", (), {"root_device": torch.device(device)})()
        self.val_check_interval, self.callbacks = val_check_interval, list(callbacks)


def test_auto_picks_enough_steps_to_hide_lightnings_cost():
    sizes = [resolve_steps_per_execution("auto", batch, FakeTrainer()) for batch in (64, 128, 256, 512)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 1  # smaller batches, shorter steps: more per group
    for batch, k in zip((64, 128, 256, 512), sizes, strict=True):
        assert k == auto_steps_per_execution(batch, torch.device("cpu"))
    gpu = resolve_steps_per_execution("auto", 512, FakeTrainer("cuda"))
    assert gpu >= resolve_steps_per_execution("auto", 64, FakeTrainer())  # a GPU step is short at any batch
    assert resolve_steps_per_execution("auto", 64, FakeTrainer(val_check_interval=100)) == 1
    every_100 = ModelCheckpoint(every_n_train_steps=100)
    assert resolve_steps_per_execution("auto", 64, FakeTrainer(callbacks=[every_100])) == 1
    assert resolve_steps_per_execution("auto", 64, None) == 1
    assert resolve_steps_per_execution(3, 64, FakeTrainer()) == 3  # an explicit K wins


@pytest.mark.parametrize(("trainer", "says"), [
    (FakeTrainer(val_check_interval=200), "data.steps_per_execution=8 does not go with trainer.val_check_interval=200"),
    (FakeTrainer(callbacks=[ModelCheckpoint(every_n_train_steps=100)]),
     "data.steps_per_execution=8 does not go with every_n_train_steps=100 of a checkpoint callback"),
])
def test_an_explicit_k_that_cannot_work_is_one_line(trainer, says):
    with pytest.raises(ConfigError) as error:
        resolve_steps_per_execution(8, 64, trainer)
    assert str(error.value).startswith(says) and "data.steps_per_execution=1" in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_accumulation_is_refused_in_one_line_naming_the_alternative(tmp_path, synthetic_root):
    with pytest.raises(ConfigError, match=r"trainer.accumulate_grad_batches=4 .*raise data.batch_size"):
        train_in_process(tmp_path / "run", *FAST, f"data.root={synthetic_root}", "trainer.accumulate_grad_batches=4")


@pytest.mark.slow
def test_limit_train_batches_and_max_steps_count_optimizer_steps_at_any_k(tmp_path, synthetic_root):
    limited = train_at(tmp_path, "limited", 8, f"data.root={synthetic_root}", "trainer.limit_train_batches=5")
    assert torch.load(limited["folder"] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    capped = train_at(tmp_path, "capped", 8, f"data.root={synthetic_root}", "trainer.max_steps=11")
    assert torch.load(capped["folder"] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 11
    assert math.isclose(capped["epochs"], 1)

import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mnistlab.data import MNISTDataModule
from mnistlab.model import SeedNet
from mnistlab.train import CONFIG_DIR, device_for_job, unknown_choice

from .conftest import REPO

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def compose_train(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_config_dir_is_the_repository_configs_in_a_checkout():
    assert CONFIG_DIR == REPO / "configs"
    assert "baseline" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_plus_and_builds_its_parts(experiment):
    cfg = compose_train(f"+experiment={experiment}")
    assert cfg.name == experiment
    net = instantiate(cfg.model)
    assert isinstance(net, SeedNet)
    optimizer = instantiate(cfg.optimizer, params=net.parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert isinstance(instantiate(cfg.data), MNISTDataModule)


def test_the_experiment_group_is_not_in_the_defaults_list():
    assert "experiment" not in compose_train()


@pytest.mark.parametrize(("dataset", "mean", "std"), [("mnist", 0.1307, 0.3081),
                                                      ("fashion_mnist", 0.2860, 0.3530),
                                                      ("kmnist", 0.1918, 0.3483)])
def test_dataset_choices_set_name_and_statistics(dataset, mean, std):
    cfg = compose_train(f"data={dataset}", "data.root=/somewhere")
    assert (cfg.data.name, cfg.data.mean, cfg.data.std, cfg.data.root) == (dataset, mean, std, "/somewhere")
    assert cfg.model.num_classes == 10 and cfg.model.image_size == 28  # the model follows the data


def test_trainer_choices_and_pass_through_options():
    assert compose_train().trainer.accelerator == "auto"
    cfg = compose_train("trainer=cpu", "trainer.max_epochs=3", "trainer.precision=bf16-mixed")
    assert (cfg.trainer.accelerator, cfg.trainer.max_epochs, cfg.trainer.precision) == ("cpu", 3, "bf16-mixed")
    assert compose_train("trainer=gpu").trainer.accelerator == "gpu"


@pytest.mark.parametrize(("args", "problem"), [
    (["data=emnist"], "unknown data 'emnist' (override data=emnist); choose one of: fashion_mnist, kmnist, mnist"),
    (["-m", "data=mnist,emnist"], "unknown data 'emnist'"),
    (["+experiment=nope"], "unknown experiment 'nope' (override +experiment=nope); choose one of: "),
    (["trainer=tpu"], "unknown trainer 'tpu'"),
    (["data=mnist", "trainer=cpu", "+experiment=baseline", "data.batch_size=3"], None),
    (["-m", "+experiment=glob(*)", "seed=1,2"], None),
])
def test_unknown_group_choices_are_named(args, problem):
    found = unknown_choice(args)
    assert found == problem if problem is None else problem in found


def test_unknown_dataset_on_the_command_line_is_one_line_and_exit_2():
    result = subprocess.run([sys.executable, "train.py", "data=emnist"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown data 'emnist' (override data=emnist); choose one of: fashion_mnist, kmnist, mnist"]


def test_parallel_sweep_jobs_take_one_gpu_each():
    assert device_for_job(None, gpus=4) == 1  # a single run: one device, Lightning picks it
    assert [device_for_job(n, gpus=4) for n in range(6)] == [[0], [1], [2], [3], [0], [1]]
    assert device_for_job(5, gpus=1) == 1 and device_for_job(5, gpus=0) == 1  # one GPU or the CPU: nothing to spread

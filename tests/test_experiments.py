"""Every experiment composes with `+experiment=NAME` and runs end to end on CPU (train.py's main(), in process)."""

import json

import pytest
import yaml

from mnistlab.config import CONFIG_DIR

from .conftest import train_in_process, train_main

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
NEEDS_A_CHECKPOINT = {"distill": "tricks.distill_teacher", "transfer": "tricks.init_from",
                      "segmentation_transfer": "tricks.init_from"}
# One test batch too: the segmentation experiments' test set is 8 batches of canvases, the slowest part of a run.
TINY = ["data.val_size=200", "data.batch_size=32", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.log_every_n_steps=1"]
# The classifiers' validation figures (tests/test_inspection.py checks them) take 40% of a run this short: the sweep
# turns them off. The segmentation task has none to turn off, so its experiment runs after the sweep, in process.
NO_FIGURES = "callbacks.validation_analysis.figures_every_n_epochs=0"
AFTER_THE_SWEEP = [*NEEDS_A_CHECKPOINT, "segmentation"]


def test_the_issue_lists_every_experiment():
    listed = ["baseline", "label_smoothing", "mixup", "cutmix", "cosine", "warmup", "large_batch", "amp", "bn",
              "stride", "kernel3", "no_bias_decay", "distill", "ema", "augment", "transfer", "bag_of_tricks"]
    # and the best recipes found for a 40-epoch budget on clothing and for digits, and the ResNet family
    resnets = ["resnet", "resnet_b", "resnet_c", "resnet_d", "resnet_zero_gamma", "resnet_bag_of_tricks"]
    segmentation = ["segmentation", "segmentation_transfer"]
    assert sorted([*listed, "bag_of_tricks_long", "mnist_best", *resnets, *segmentation]) == EXPERIMENTS


@pytest.mark.slow
@pytest.mark.timeout(900)  # 23 runs in one sweep, then four more
def test_every_experiment_runs_end_to_end(tmp_path, synthetic_root, monkeypatch):
    sweep = tmp_path / "sweep"
    exclude = ",".join(AFTER_THE_SWEEP)
    result = train_main(monkeypatch, "-m", f"+experiment=glob(*,exclude=[{exclude}])", f"data.root={synthetic_root}",
                        *TINY, NO_FIGURES, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    finished = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        name = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["name"]
        finished[name] = json.loads((job / "metrics.json").read_text())
    assert sorted(finished) == sorted(set(EXPERIMENTS) - set(AFTER_THE_SWEEP))
    for name, metrics in finished.items():  # classifiers all
        assert metrics["epochs"] == 2 and 0 <= metrics["test/acc"] <= 1, name

    # The two that start from an earlier run get the baseline's checkpoint; distillation gets an ensemble of it
    # and the (BatchNorm) bag_of_tricks network, given as a list on the command line.
    def checkpoint(experiment: str) -> str:
        return str(next(p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra" / "overrides.yaml").read_text()
                        .count(f"+experiment={experiment}\n")) / "checkpoints" / "last.ckpt")
    given = {"distill": f"[{checkpoint('baseline')},{checkpoint('bag_of_tricks')}]", "transfer": checkpoint("baseline"),
             "segmentation_transfer": checkpoint("baseline")}  # a classifier's backbone into the FCN
    for name, key in NEEDS_A_CHECKPOINT.items():
        run_dir = tmp_path / name
        train_in_process(run_dir, f"+experiment={name}", f"{key}={given[name]}", f"data.root={synthetic_root}", *TINY)
        assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2
    segmentation = train_in_process(tmp_path / "segmentation", "+experiment=segmentation",
                                     f"data.root={synthetic_root}", *TINY)
    assert segmentation["epochs"] == 2 and 0 <= segmentation["test/miou"] <= 1


@pytest.mark.parametrize(("overrides", "says"), [
    (["tricks.label_smoothing=1.0"], "error: tricks.label_smoothing=1.0 must be in [0, 1)"),
    (["tricks.mixup_alpha=-0.2"], "error: tricks.mixup_alpha=-0.2 must be >= 0 (0 turns mixup off)"),
    (["+experiment=warmup", "scheduler.warmup_epochs=3"],
     "error: scheduler.warmup_epochs=3 must be below trainer.max_epochs=2: warmup must end before training does; "
     "add scheduler.warmup_epochs=1, or train longer (trainer.max_epochs=4 or more)"),
    (["+experiment=distill"],
     "error: tricks.distill_teacher=<path to a checkpoint of an earlier run>: no such checkpoint file"),
    (["+experiment=distill", "tricks.distill_teacher=[]"],
     "error: tricks.distill_teacher=[] must be null, a checkpoint path, or a list of them [A,B,...] (their ensemble "
     "is the teacher)"),
    (["model.downsample=average"], "error: model.downsample='average' must be one of pool, stride"),
])
def test_invalid_values_stop_before_training_with_one_line(tmp_path, synthetic_root, overrides, says, monkeypatch):
    run_dir = tmp_path / "run"
    result = train_main(monkeypatch, *overrides, f"data.root={synthetic_root}", *TINY, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == says
    assert not run_dir.exists()  # checked before Hydra makes the run folder

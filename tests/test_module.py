import math

import pytorch_lightning as pl
import torch

from mnistlab.tasks.classification import Classifier

from .conftest import classifier, configured

MODEL = {"_target_": "mnistlab.models.SeedNet", "num_classes": 10}
SGD = {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9}


def fit(module, root, **trainer_args) -> pl.Trainer:
    data = configured("data", root=str(root), val_size=200, batch_size=32, eval_batch_size=200, download=False)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, **trainer_args)
    trainer.fit(module, datamodule=data)
    return trainer


def test_scheduler_steps_once_per_batch_over_the_whole_run(synthetic_root):
    module = classifier(MODEL, SGD, {"_target_": "mnistlab.schedules.cosine", "_partial_": True, "warmup_epochs": 0,
                                      "warmup_start_factor": 0.01, "warmup_min_steps": 0})
    trainer = fit(module, synthetic_root, max_epochs=2, limit_train_batches=5)
    schedule = trainer.lr_scheduler_configs[0]
    assert schedule.interval == "step" and schedule.scheduler.T_max == 10  # 2 epochs x 5 batches
    assert trainer.global_step == 10
    assert math.isclose(trainer.optimizers[0].param_groups[0]["lr"], 0.0, abs_tol=1e-12)  # decayed to zero


def test_without_a_scheduler_the_lr_stays_put(synthetic_root):
    trainer = fit(classifier(MODEL, SGD, {}), synthetic_root, max_epochs=1, limit_train_batches=3)
    assert trainer.lr_scheduler_configs == []
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.1


def test_metrics_are_logged_per_stage_and_best_validation_accuracy_is_kept(synthetic_root):
    module = classifier(MODEL, SGD, {})
    trainer = fit(module, synthetic_root, max_epochs=2, limit_train_batches=10)
    logged = trainer.callback_metrics
    assert {"train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/acc_best"} <= set(logged)
    assert 0 <= float(logged["val/acc"]) <= float(logged["val/acc_best"]) <= 1
    trainer.test(module, datamodule=trainer.datamodule, verbose=False)
    assert 0 <= float(trainer.callback_metrics["test/acc"]) <= 1


def test_checkpoint_rebuilds_the_network_from_its_saved_configs(tmp_path):
    module = classifier(MODEL, SGD, {})
    trainer = pl.Trainer(accelerator="cpu", logger=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    restored = Classifier.load_from_checkpoint(tmp_path / "m.ckpt")
    assert restored.hparams.model == MODEL and restored.hparams.optimizer == SGD
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(restored.eval()(x), module.eval()(x))


def test_the_progress_bar_has_the_loss_from_the_first_step_of_a_short_epoch(synthetic_root):
    trainer = fit(classifier(MODEL, SGD, {}), synthetic_root, max_epochs=1, limit_train_batches=10,
                  log_every_n_steps=50)  # the logger writes every 50 steps: never, in this run
    assert "train/loss_step" in trainer.progress_bar_metrics

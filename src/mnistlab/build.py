"""A run built from its composed config: the data module, the task with its network, the Trainer with its callbacks
and loggers; what `python train.py` fits and what mnistlab-bench times as users run it."""


import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from mnistlab.callbacks.progress import NoProfiler
from mnistlab.models.registry import register_config_networks
from mnistlab.precision import fast_precision
from mnistlab.tasks.registry import register_config_task


def device_for_job(job_num: int | None, gpus: int) -> int | list[int]:
    """`trainer.devices` for one run: 1 device, except parallel sweep jobs on a multi-GPU machine, which take
    one GPU each (job N -> GPU N mod gpus) instead of all landing on GPU 0."""
    return [job_num % gpus] if job_num is not None and gpus > 1 else 1


def _device_for_this_job() -> int | list[int]:
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return device_for_job(HydraConfig.get().job.num if multirun else None, torch.cuda.device_count())


# The trainer config's resolvers: one device per parallel sweep job, bf16 where it is fast.
OmegaConf.register_new_resolver("device_for_job", _device_for_this_job, replace=True)
OmegaConf.register_new_resolver("fast_precision", fast_precision, replace=True)


def checkpoint_without_validation(callback: DictConfig, val_size: int | None) -> dict:
    """With no validation split there is no val/acc to rank checkpoints by: the checkpoint kept (and tested) is
    the last epoch's, saved at each epoch's end (Lightning would wait for a validation under
    trainer.check_val_every_n_epoch > 1). The overrides for that callback, none for any other."""
    if val_size != 0 or not issubclass(get_object(callback._target_), pl.callbacks.ModelCheckpoint):
        return {}
    return {"monitor": None, "save_on_train_epoch_end": True}


def build_task(cfg: DictConfig) -> pl.LightningModule:
    """The task's LightningModule (config group `task`, its `metrics` aside) given the model, optimizer,
    scheduler and tricks; unbuilt configs, so that its checkpoint can rebuild the network alone."""
    parts = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
             for key in ("model", "task", "optimizer", "scheduler", "tricks")}
    # The user's own config may name any network and task; a checkpoint may not.
    register_config_networks(parts["model"])
    task = {key: value for key, value in parts["task"].items() if key != "metrics"}
    register_config_task(task)
    return instantiate(task, model=parts["model"], optimizer=parts["optimizer"], scheduler=parts["scheduler"],
                       **parts["tricks"], _recursive_=False, _convert_="all")


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """The data module of config group `data`, given plain values (not Hydra's DictConfig): what it saves in its
    checkpoints then loads safely."""
    return instantiate(cfg.data, _convert_="all")


def build_run(cfg: DictConfig, extra_callbacks: tuple[pl.Callback, ...] = ()):
    """(data module, task module, Trainer) from a composed config: what `train` runs, and what the benchmark
    times as users run it."""
    datamodule = build_datamodule(cfg)
    module = build_task(cfg)
    if cfg.get("compile"):
        module.compile_network(None if cfg.compile is True else cfg.compile)
    # trainer.enable_progress_bar=false drops the progress bar callback, which Lightning would refuse beside it.
    shown = cfg.trainer.get("enable_progress_bar", True) is not False
    chosen = [c for c in cfg.get("callbacks", {}).values() if c is not None]  # null drops one (a task may)
    callbacks = [instantiate(c, **checkpoint_without_validation(c, cfg.data.get("val_size"))) for c in chosen
                 if shown or not issubclass(get_object(c._target_), pl.callbacks.ProgressBar)] + list(extra_callbacks)
    loggers = [instantiate(c) for c in cfg.get("logger", {}).values()]
    profiler = {} if cfg.trainer.get("profiler") else {"profiler": NoProfiler()}  # trainer.profiler=simple works
    # The task runs its optimizer steps itself (mnistlab.execution): it clips the gradients, not the Trainer.
    module.gradient_clip_val = cfg.trainer.get("gradient_clip_val")
    module.gradient_clip_algorithm = cfg.trainer.get("gradient_clip_algorithm") or "norm"
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, gradient_clip_val=None,
                          gradient_clip_algorithm=None, **profiler)
    return datamodule, module, trainer

"""A run as a trial of an Optuna search (hydra/sweeper=mnistlab_optuna, which `hparams_search=optuna` picks): it
reports its validation metric to the study after every validation and stops when the pruner says so, and under
the joblib launcher on a CPU it takes its share of the cores."""

import json
import logging
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

log = logging.getLogger(__name__)
SWEEPER = "hydra_plugins.mnistlab_optuna_sweeper.sweeper.OptunaSweeper"


def trial_number() -> int | None:
    """The Optuna trial this job runs, or None outside a search."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    sweeper = HydraConfig.get().sweeper
    return sweeper.get("trial") if sweeper.get("_target_") == SWEEPER else None


def open_trial(number: int):
    """The study's trial `number`, as the job's own handle on it (the sweeper process asked for it)."""
    import optuna  # the sweep extra: only searches need it

    from hydra_plugins.mnistlab_optuna_sweeper._optuna import make_pruner, open_storage, study_url

    sweeper = HydraConfig.get().sweeper
    url = study_url(sweeper.storage, Path(HydraConfig.get().sweep.dir))
    # The sweeper's pruner: should_prune() asks this study object's.
    study = optuna.load_study(study_name=sweeper.study_name, storage=open_storage(url),
                              pruner=make_pruner(sweeper.pruner))
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


class OptunaPruning(pl.Callback):
    """Reports `metric` after every validation to the trial; when the pruner says the trial is hopeless, stops
    the fit at the end of that epoch (the train entry point then records it as pruned)."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric, self.pruned_at = trial, metric, None  # an optuna.Trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        self.trial.report(float(trainer.callback_metrics[self.metric]), step=trainer.current_epoch)
        if trainer.max_epochs and trainer.current_epoch + 1 >= trainer.max_epochs:
            return  # a trial that has trained its last epoch is complete, however it compares
        if self.trial.should_prune():
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True


def record_pruned(run_dir: Path, pruning: OptunaPruning) -> None:
    """pruned.json in the trial's folder (the report lists it), then the stop Optuna records as PRUNED."""
    import optuna

    (run_dir / "pruned.json").write_text(json.dumps({"status": "pruned", "epoch": pruning.pruned_at,
                                                     "trial": pruning.trial.number}, indent=2) + "\n")
    print(f"trial {pruning.trial.number} pruned after epoch {pruning.pruned_at}")
    raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")


def share_cores(accelerator: str) -> None:
    """Under the joblib launcher on a CPU, n parallel jobs each take cores/n threads: one thread per core each
    would oversubscribe the cores. joblib's default (loky) workers start with OMP_NUM_THREADS (and MKL's,
    OpenBLAS's) at that share unless the launching environment sets them, which then wins; without the variable
    (another backend) the job sets torch's threads itself. Each job logs its thread count."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN or accelerator != "cpu":
        return
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return
    if "OMP_NUM_THREADS" in os.environ:  # joblib's share, or the user's own choice
        log.info(f"joblib job: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {torch.get_num_threads()} torch "
                 "thread(s)")
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = threads_per_job(cores, launcher.get("n_jobs", -1))
    torch.set_num_threads(threads)
    log.info(f"joblib on {cores} cores: {threads} torch thread(s) for this job")


def threads_per_job(cores: int, n_jobs: int | None) -> int:
    """Each of n parallel jobs' share of the cores; joblib's n_jobs=-1 (or null) means one job per core."""
    jobs = cores if n_jobs in (None, -1) or n_jobs > cores else max(1, n_jobs)
    return max(1, cores // jobs)

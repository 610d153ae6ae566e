"""Entry point: compose the config, fit, test the best checkpoint, write metrics.json, print a summary."""

import contextlib
import errno
import json
import logging
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from hydra.types import RunMode
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mnistlab.build import build_run
from mnistlab.callbacks.averaging import load_tested_weights
from mnistlab.callbacks.progress import seconds_per_epoch
from mnistlab.checkpoints import check_resumable, read_checkpoint
from mnistlab.config import (
    CONFIG_DIR,
    compose_run_config,
    groups,
    search_folders,
    shell_spelling,
    spell_trainer_overrides,
)
from mnistlab.console import route_logs
from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.hparams import compared_settings, log_hparams
from mnistlab.models.registry import build_network, register_config_networks
from mnistlab.override_errors import one_line, unknown_choice, unknown_key
from mnistlab.run_folder import (
    check_not_finished,
    check_not_in_use,
    check_writable,
    explicit_sweep_folder,
    hold,
    hold_sweep,
    is_search,
    resume_checkpoint,
    unfinished_run,
)
from mnistlab.search import OptunaPruning, open_trial, record_pruned, share_cores, trial_number
from mnistlab.sweep_plan import interrupted_job
from mnistlab.tracking import failed_on_error, record_run, tracker_lines
from mnistlab.validation import check_config

log = logging.getLogger(__name__)
# pytorch-lightning 2.6 calls a torch.utils._pytree API that newer torch deprecates: noise on every run.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def first_process() -> bool:
    """Not one of the further processes of a multi-process (DDP) run, which share the first one's run folder."""
    return all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def train(cfg: DictConfig, check: bool = True) -> dict:
    """Fit (or resume, with `ckpt_path`), then test the best checkpoint (the last, without validation) on the
    official test set; returns the final metrics. The run folder is held for the run's life (`main` holds it
    already, from before Hydra writes there). `check=False`: the config was checked already (`main` checks a single
    run before Hydra starts)."""
    if check:
        check_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with hold(run_dir) if first_process() else contextlib.nullcontext() as claim:
        try:
            check_writable(run_dir)
            return fit_and_test(cfg, run_dir)
        except BaseException:
            single = HydraConfig.get().mode != RunMode.MULTIRUN
            if single and claim is not None and claim.nothing_saved():
                claim.remove_what_it_made()  # a run that failed before saving anything: nothing to trip over
            raise


def fit_and_test(cfg: DictConfig, run_dir: Path) -> dict:
    """The run itself, in its locked folder: fit, test the chosen weights, write and print the metrics."""
    route_logs(cfg.get("verbose", False))
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    resume_from = resume_checkpoint(cfg.get("ckpt_path"), run_dir)
    if resume_from is None and (resume_from := interrupted_job(run_dir)) is not None:
        log.info(f"resuming this job from {resume_from}")

    parts = OmegaConf.to_container(cfg, resolve=True)
    trial = trial_number()
    pruning = None if trial is None else OptunaPruning(open_trial(trial), cfg.task.metrics.monitor)
    datamodule, module, trainer = build_run(cfg, () if pruning is None else (pruning,))
    share_cores(trainer.strategy.root_device.type)

    with failed_on_error(trainer):
        print_start(cfg, module, trainer, run_dir)
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        if pruning is not None and pruning.pruned_at is not None:
            record_pruned(run_dir, pruning)
        names = cfg.task.metrics
        best_value = trainer.callback_metrics.get(names.best)  # None: no validation (data.val_size=0)
        if best_value is None and trainer.checkpoint_callback is not None:  # a resumed fit with no epoch left to run
            best_value = trainer.checkpoint_callback.best_model_score
        best = load_tested_weights(trainer, module, run_dir)
        trainer.test(module, datamodule=datamodule, verbose=cfg.get("verbose", False))  # print_summary says it

        epochs = trainer.current_epoch
        metrics = {
            **{name: float(trainer.callback_metrics[name]) for name in names.test},
            names.best: None if best_value is None else float(best_value),
            "epochs": epochs,
            "seconds": round(time.perf_counter() - start, 3),
            "seconds_per_epoch": seconds_per_epoch(trainer),
            "best_checkpoint": best,
            "data": f"{datamodule.name} from {datamodule.root}",  # what it trained on: the bundled digits, say
        }
        overridden = [line.lstrip("+~").split("=", 1)[0] for line in HydraConfig.get().overrides.task]
        log_hparams(trainer, parts, {name: metrics[name] for name in [*names.test, names.best]}, overridden)
        if trainer.is_global_zero:  # under DDP every rank has the synced metrics; one writes them
            (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            record_run(trainer, compared_settings(parts, overridden), run_dir, best)
            print_summary(metrics, [*names.test, names.best], run_dir, tracker_lines(trainer, run_dir))
    return metrics


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def print_start(cfg: DictConfig, module: pl.LightningModule, trainer: pl.Trainer, run_dir: Path) -> None:
    """One line before training: what trains on what, how, on which device, and where it writes."""
    net = module.net
    size = sum(p.numel() for p in net.parameters())
    log.info(f"{type(net).__name__} ({size:,} parameters) on {cfg.data.name} from {cfg.data.root}: "
          f"{plural(cfg.trainer.max_epochs, 'epoch')} at batch {cfg.data.batch_size}, {trainer.precision} on "
          f"{trainer.strategy.root_device.type}; writing to {run_dir}")


def print_summary(metrics: dict, names: list[str], run_dir: Path, trackers: list[tuple[str, str]]) -> None:
    """The final metrics (the headline first; a best validation value of none: no validation split), the time,
    and where everything went: the run folder, the best checkpoint, and each tracker (tracking.tracker_lines)."""
    figures = "  ".join(f"{name} {metrics[name]:.4f}" for name in names if metrics[name] is not None)
    validated = metrics[names[-1]] is not None
    epochs = plural(metrics["epochs"], "epoch")
    seconds = metrics["seconds_per_epoch"]
    timed = "" if seconds is None else f", {seconds:.1f} s per epoch{' with validation' if validated else ''}"
    log.info(f"{figures}  ({'' if validated else 'no validation split, '}{epochs}{timed})")
    log.info(f"data          {metrics['data']}")
    log.info(f"run folder    {run_dir}")
    log.info(f"checkpoint    {metrics['best_checkpoint'] or '(none saved)'}")
    for tracker, where in trackers:
        log.info(f"{tracker:<14}{where}")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """One run; returns the task's best validation value (task.metrics.best), what a sweep optimises."""
    try:
        return train(cfg, check=HydraConfig.get().mode == RunMode.MULTIRUN)[cfg.task.metrics.best]
    except SIGTERMException:
        # Lightning stops at the next step and exits 0; a terminated job must not look like a finished one.
        sys.exit(128 + signal.SIGTERM)
    except Exception as err:
        message = one_line(err)
        if type(err).__name__ == "TrialPruned":
            raise  # not a failure: the Optuna sweeper records the trial as pruned
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return record_failure(message, cfg.task.metrics.mode)
        if isinstance(err, OSError) and err.errno in UNWRITABLE:  # a read-only folder, a full disk, a long name
            message = f"cannot write {err.filename or 'the run folder'}: {err.strerror}"
        elif not isinstance(err, (MnistlabError, InstantiationException, MisconfigurationException)):
            raise
        # Bad input (a bad value, trainer=gpu without a GPU, missing data, a folder it cannot write): one line.
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


# OSErrors that name a place the user can fix: permissions, a read-only or full file system, a name too long.
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG)


def record_failure(message: str, mode: str) -> float:
    """A failed sweep job: failure.json in its folder (mnistlab-report lists it), the traceback in its log, and
    the worst value of the objective (max or min `mode`), so the sweep and an Optuna search go on."""
    job = HydraConfig.get()
    folder = Path(job.runtime.output_dir)
    failure = {"status": "failed", "error": message, "overrides": list(job.overrides.task),
               "traceback": traceback.format_exc()}
    (folder / "failure.json").write_text(json.dumps(failure, indent=2) + "\n")
    log.error(failure["traceback"])
    print(f"error: job {job.job.num} failed, the sweep goes on: {message}", file=sys.stderr)
    return float("-inf") if mode == "max" else float("inf")


def precheck(args: list[str]) -> list[str]:
    """Validate a single run's config before Hydra creates its folder; `ckpt_path=last` without a
    `hydra.run.dir` gets the folder of the newest unfinished run of this name. Returns the arguments to run."""
    try:
        cfg = compose_run_config(args)
    except HydraException as err:
        problem = unknown_choice(args)  # a choice itself is wrong (experiment=X without its +)
        if problem is None:
            folders = search_folders(args)
            # What sets which keys exist: the group choices, and where they are found.
            choices = [a for a in args if a.lstrip("+~").split("=")[0] in [*groups(folders), "hydra.searchpath"]]
            try:
                problem = unknown_key(args, compose_run_config(choices), groups(folders))
            except HydraException:
                problem = None  # Hydra's own message says what is wrong
        raise ConfigError(problem or one_line(err)) from None
    check_config(cfg)
    folder = Path(cfg.hydra.run.dir)
    if cfg.get("ckpt_path") == "last" and not any(a.startswith("hydra.run.dir=") for a in args):
        folder = unfinished_run(folder.parent)
        print(f"resuming {folder}")
    resume_from = resume_checkpoint(cfg.get("ckpt_path"), folder)  # a missing file: one line, no run folder made
    if resume_from:  # unsafe, foreign, newer or another model's: one line, before anything is written
        model = OmegaConf.to_container(cfg.model, resolve=True)
        register_config_networks(model)
        check_resumable(read_checkpoint(resume_from, "ckpt_path"), build_network(model), f"ckpt_path={resume_from}")
    if first_process():
        check_not_finished(folder)
        check_not_in_use(folder)
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args = [*args, f"hydra.run.dir={folder}"]  # the folder `main` holds is the one Hydra writes
    return args


def single_run(args: list[str]) -> bool:
    """Plain overrides of one run: no Hydra flag (-m, --cfg, ...) and no search, which runs many."""
    return not any(a.startswith("-") for a in args) and not any(
        a.startswith("hparams_search=") and a != "hparams_search=null" for a in args)


def main() -> None:
    """`python train.py` and `mnistlab-train`: check the config, then hand over to Hydra."""
    # SIGINT (Ctrl-C, kill -INT) stops the run and saves a checkpoint, also when the launching shell started it
    # with SIGINT ignored (a background job), where Python would otherwise install no handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = sys.argv[1:]
    try:
        problem = unknown_choice(args)
        if problem:
            raise ConfigError(problem)
        args = shell_spelling(spell_trainer_overrides(args))
        with contextlib.ExitStack() as held:
            if single_run(args):
                args = precheck(args)
                if first_process():  # one writer from the first byte: held before Hydra writes .hydra/
                    folder = Path(next(a for a in reversed(args) if a.startswith("hydra.run.dir=")).split("=", 1)[1])
                    held.enter_context(hold(folder))
                    check_not_finished(folder)  # a run that finished while this one started
            elif (folder := explicit_sweep_folder(args)) is not None and not is_search(args):
                held.enter_context(hold_sweep(folder))  # its sweeper continues the sweep, or refuses another's
            sys.argv[1:] = args
            hydra_main()
    except MnistlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

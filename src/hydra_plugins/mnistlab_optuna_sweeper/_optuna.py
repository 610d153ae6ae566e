"""The search itself (see __init__.py): the search space from Hydra's override grammar, the ask-and-tell loop, the
heartbeats of the trials in flight. Imported only when a search starts (sweeper.py), since it needs Optuna."""

import json
import logging
import random
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PRUNERS = {"median": optuna.pruners.MedianPruner, "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
           "hyperband": optuna.pruners.HyperbandPruner}
STUDY_FILE = "optuna_study.json"
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def distribution(override: Override) -> optuna.distributions.BaseDistribution | None:
    """An Optuna distribution for a searched parameter: choice(...) -> categorical, interval(a, b) -> uniform
    (tag(log, ...) -> log-uniform; integers when both ends are), range(a, b, step) -> a stepped one. None for a
    fixed value."""
    value, log_scale = override.value(), "log" in getattr(override.value(), "tags", set())
    if isinstance(value, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        if isinstance(value.start, int) and isinstance(value.end, int):
            return optuna.distributions.IntDistribution(value.start, value.end, log=log_scale)
        return optuna.distributions.FloatDistribution(value.start, value.end, log=log_scale)
    if isinstance(value, RangeSweep):
        stop = value.stop - value.step  # range() excludes its end, as Python's does
        if all(isinstance(x, int) for x in (value.start, value.stop, value.step)):
            return optuna.distributions.IntDistribution(value.start, stop, step=value.step)
        return optuna.distributions.FloatDistribution(value.start, stop, step=value.step)
    return None


def study_url(storage: str | None, sweep_dir: Path) -> str:
    """The study's storage: the configured URL, else optuna.db in the sweep folder."""
    return storage or f"sqlite:///{(Path(sweep_dir) / 'optuna.db').resolve()}"


def make_pruner(setting: Any) -> optuna.pruners.BasePruner:
    """null: no pruning; a name of PRUNERS with Optuna's defaults; or a pruner from a _target_ config (built
    already when Hydra instantiated the sweeper; built here in a job, which reads the sweeper's config)."""
    if setting is None:
        return optuna.pruners.NopPruner()
    if isinstance(setting, optuna.pruners.BasePruner):
        return setting
    if OmegaConf.is_dict(setting) or isinstance(setting, dict):
        return instantiate(setting)
    if setting not in PRUNERS:
        raise ValueError(f"hydra.sweeper.pruner={setting}: choose null, {', '.join(PRUNERS)}, or a dict with an "
                         "optuna.pruners _target_")
    return PRUNERS[setting]()


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None):
    """The study's storage. Workers that start together race to create a new database's tables: the loser waits
    and tries again. On SQLite, writers wait for each other instead of failing."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    for attempt in range(10):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words, and what we need
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_interval,
                                                  grace_period=grace_period)
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == 9:
                raise
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


class Heartbeats:
    """Records a heartbeat for every trial in flight, every `interval` seconds, from a daemon thread: when this
    process dies, they stop, and another process (or the next run of the command) marks the trials failed."""

    def __init__(self, storage: optuna.storages.BaseStorage, interval: int):
        self.storage, self.interval, self.trials = storage, interval, set()
        self.stopped = threading.Event()
        threading.Thread(target=self.beat, daemon=True).start()

    def add(self, trial_ids) -> None:
        """Beat once now: a trial without any heartbeat is never found stale."""
        for trial_id in trial_ids:
            self.storage.record_heartbeat(trial_id)
            self.trials.add(trial_id)

    def beat(self) -> None:
        while not self.stopped.wait(self.interval):
            for trial_id in list(self.trials):
                self.storage.record_heartbeat(trial_id)


class OptunaSearch:
    def __init__(self, direction: str, study_name: str, storage: str | None, n_trials: int, n_jobs: int,
                 sampler: optuna.samplers.BaseSampler, pruner: Any, params: dict, heartbeat_interval: int,
                 grace_period: int, trial: int | None):
        self.direction, self.study_name, self.storage_url = direction, study_name, storage
        self.n_trials, self.n_jobs = n_trials, max(1, n_jobs)
        # Hydra has instantiated what has a _target_ (the sampler, a pruner given as a dict) before this runs.
        self.sampler, self.pruner, self.params = sampler, pruner, params or {}
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def url(self, sweep_dir: Path) -> str:
        return study_url(self.storage_url, sweep_dir)

    def study(self, sweep_dir: Path) -> optuna.Study:
        url = self.url(sweep_dir)
        storage = open_storage(url, self.heartbeat_interval, self.grace_period)
        return optuna.create_study(study_name=self.study_name, storage=storage, sampler=self.sampler,
                                   pruner=make_pruner(self.pruner), direction=self.direction, load_if_exists=True)

    def sweep(self, arguments: list[str]) -> list:
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        # The search space, then the command line, which wins for a key both name (a value fixed for this search).
        settings = {}
        for override in parser.parse_overrides([f"{key}={value}" for key, value in self.params.items()] + arguments):
            settings[override.get_key_element()] = override
        searched = {key: distribution(o) for key, o in settings.items() if distribution(o) is not None}
        fixed = [o.input_line for key, o in settings.items() if key not in searched]

        study = self.study(sweep_dir)
        # Where the study lives, for mnistlab-report and optuna-dashboard (the storage URL may hold a password:
        # the file stays in the sweep folder, as the study does).
        (sweep_dir / STUDY_FILE).write_text(json.dumps({"study_name": study.study_name, "storage": self.url(sweep_dir),
                                                        "direction": self.direction}, indent=2) + "\n")
        heartbeats = Heartbeats(study._storage, self.heartbeat_interval)
        returns = []
        while True:
            with warnings.catch_warnings():  # "experimental", as the heartbeats
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # trials of a process that died: FAIL, counted as done
            counted = study.get_trials(deepcopy=False, states=(*DONE, optuna.trial.TrialState.RUNNING))
            remaining = self.n_trials - len(counted)
            if remaining <= 0:
                break
            with warnings.catch_warnings():  # the heartbeats are kept by Heartbeats, not by Study.optimize
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                trials = [study.ask(searched) for _ in range(min(self.n_jobs, remaining))]
            heartbeats.add(trial._trial_id for trial in trials)
            batch = [[*fixed, *(f"{key}={value}" for key, value in trial.params.items()),
                      f"hydra.sweeper.trial={trial.number}"] for trial in trials]
            # Not composed here first: mnistlab's launcher records a trial whose config does not compose as failed.
            results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            for trial, result in zip(trials, results, strict=True):
                self.tell(study, trial, result)
                heartbeats.trials.discard(trial._trial_id)
            returns.append(results)
        heartbeats.stopped.set()
        self.write_results(study, sweep_dir)
        return returns

    @staticmethod
    def tell(study: optuna.Study, trial: optuna.Trial, result) -> None:
        """A job's end, as Optuna records it: its value; PRUNED when it stopped on the pruner's word; FAIL when it
        failed (failure.json in its folder, written by the job) or raised."""
        # A job whose config did not compose (mnistlab's launcher) has no config: its folder is its working dir.
        folder = (Path(result.hydra_cfg.hydra.runtime.output_dir) if result.hydra_cfg else
                  Path(result.working_dir) if result.working_dir else None)
        if result.status == JobStatus.FAILED:
            pruned = isinstance(result._return_value, optuna.TrialPruned)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.FAIL)
        elif folder is not None and (folder / "pruned.json").is_file():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif folder is not None and (folder / "failure.json").is_file():
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, float(result.return_value))

    def write_results(self, study: optuna.Study, sweep_dir: Path) -> None:
        states = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,))) for state in DONE}
        results = {"study_name": study.study_name, "direction": self.direction, "trials": states}
        if states["complete"]:
            results |= {"best_value": study.best_value, "best_params": study.best_params,
                        "best_trial": study.best_trial.number}
            log.info(f"Best value {study.best_value} with {study.best_params} (trial {study.best_trial.number})")
        (sweep_dir / "optimization_results.json").write_text(json.dumps(results, indent=2) + "\n")

"""mnistlab's Hydra sweeper on current Optuna (`hydra/sweeper=mnistlab_optuna`; `hparams_search=optuna` picks it).

Optuna's ask-and-tell interface: the sweeper asks for trials, launches them as Hydra jobs through any launcher
(basic, joblib, submitit), and tells Optuna how each ended: its value, PRUNED, or FAIL. Each job gets its trial's
number (`hydra.sweeper.trial`), so it can report every validation to the study and stop when the pruner says so
(mnistlab.search). The study lives in a storage that outlives the process (by default a SQLite file in the sweep
folder): rerunning the command continues it, and several processes can work on one study. A daemon thread records
a heartbeat for each trial in flight, so trials of a process that died are marked failed once their heartbeat is
older than the grace period.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    """The sweeper's settings and their only defaults (configs/hparams_search/optuna.yaml sets what it changes)."""
    _target_: str = "hydra_plugins.mnistlab_optuna_sweeper.sweeper.OptunaSweeper"
    direction: str = "maximize"
    study_name: str = "mnistlab"
    # Any URL Optuna takes (sqlite:///file.db, postgresql://..., mysql://...); null: optuna.db in the sweep folder.
    storage: Optional[str] = None  # noqa: UP045 (OmegaConf reads typing.Optional)
    n_trials: int = 20  # the study's budget: trials complete, pruned, failed or running, over every worker
    n_jobs: int = 1  # trials asked for and launched at a time (hydra/launcher=joblib runs them in parallel)
    sampler: dict[str, Any] = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler"})
    # null: no pruning; median, successive_halving, hyperband; or a dict with an optuna.pruners _target_. A trial
    # reports task.metrics.monitor after each validation, and a hopeless one stops early.
    pruner: Any = None
    params: dict[str, str] = field(default_factory=dict)
    heartbeat_interval: int = 10  # seconds between heartbeats of a trial in flight
    grace_period: int = 60  # a trial whose heartbeat is older is marked failed (its process died)
    trial: Optional[int] = None  # noqa: UP045 (set per job: the Optuna trial number the job reports to)


ConfigStore.instance().store(group="hydra/sweeper", name="mnistlab_optuna", node=OptunaSweeperConf,
                             provider="mnistlab")

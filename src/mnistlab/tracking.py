"""Where a run's record goes besides its folder: the trackers chosen with `logger=` (configs/logger/: TensorBoard,
CSV, MLflow, or several), what each keeps of a finished run, and the summary lines that say where to look.

Lightning's loggers get every scalar the task logs as it logs it; what only exists once the run is over (the
settings compared, metrics.json, the config, the best checkpoint) is handed over here."""

import contextlib
from pathlib import Path

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf
from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

from mnistlab.callbacks.checkpointing import LAST

# MLflow's limits (mlflow.utils.validation): longer keys are refused, longer values cut.
MAX_PARAM_KEY = 250
MAX_PARAM_VALUE = 6000
# The run's files kept as MLflow artifacts (path in the run folder: folder among the artifacts, None for the top).
ARTIFACTS = {"metrics.json": None, ".hydra/config.yaml": "hydra", ".hydra/overrides.yaml": "hydra"}


def experiment_name(name: str) -> str:
    """The MLflow experiment a run goes to: for a single run its `name` (every run of a recipe side by side), for
    a sweep's job the sweep folder (`logs/NAME/multiruns/TIME`, what mnistlab-report takes): one experiment per
    sweep."""
    hydra = HydraConfig.get()
    return str(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else name


def run_folder_name() -> str:
    """The last part of the run folder: the start time of a single run, the job number of a sweep's job."""
    return Path(HydraConfig.get().runtime.output_dir).name


OmegaConf.register_new_resolver("tracking_experiment", experiment_name, replace=True)
OmegaConf.register_new_resolver("run_folder_name", run_folder_name, replace=True)


def sqlite_database(tracking_uri: str) -> Path | None:
    """The file of a local SQLite tracking store (`sqlite:///logs/mlflow.db`: relative to the current folder,
    `sqlite:////abs/mlflow.db`: absolute), or None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


class MLflowStoreLogger(MLFlowLogger):
    """Lightning's MLFlowLogger that can open a local SQLite store on a fresh clone: it makes the database's
    folder (SQLite would not), and keeps the artifacts beside the database (`mlartifacts/` next to it) instead of
    in ./mlruns of whatever folder train.py runs from, MLflow's default. Any other tracking URI is MLflow's.

    Each MLflow run is tagged with its run folder; a run resumed in its folder (`ckpt_path=last`, a continued
    sweep's job: its `last.ckpt` is there) continues that folder's MLflow run, its curves and its status."""

    def __init__(self, tracking_uri: str, run_folder: str, artifact_location: str | None = None, **kwargs):
        database = sqlite_database(tracking_uri)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
            artifact_location = artifact_location or str((database.parent / "mlartifacts").resolve())
        folder = Path(run_folder).resolve()
        kwargs["tags"] = {**(kwargs.get("tags") or {}), "run_folder": str(folder)}
        if kwargs.get("run_id") is None and (folder / "checkpoints" / LAST).is_file():
            kwargs["run_id"] = earlier_run(tracking_uri, kwargs.get("experiment_name"), folder)
        super().__init__(tracking_uri=tracking_uri, artifact_location=artifact_location, **kwargs)


def earlier_run(tracking_uri: str, experiment: str | None, folder: Path) -> str | None:
    """The id of the newest MLflow run of `experiment` tagged with run folder `folder`, if any."""
    from mlflow.tracking import MlflowClient  # the mlflow extra: imported only by runs that log to MLflow

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment) if experiment else None
    if found is None or "'" in str(folder):  # a quote would end the filter's string
        return None
    runs = client.search_runs([found.experiment_id], f"tags.run_folder = '{folder}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def record_run(trainer: pl.Trainer, settings: dict, run_dir: Path, best_checkpoint: str | None) -> None:
    """What the trackers keep of a finished run besides its scalars. MLflow: the compared settings (`settings`,
    see inspection.compared_settings) as params, metrics.json and the config as artifacts, the run folder and the
    best checkpoint's path as tags (the checkpoint itself stays in the run folder). CSV: the settings in its
    hparams.yaml, beside metrics.csv. TensorBoard's HPARAMS tab is inspection.log_hparams."""
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            record_mlflow_run(logger, settings, run_dir, best_checkpoint)
        elif isinstance(logger, CSVLogger):
            logger.log_hyperparams(settings)
            logger.save()


def record_mlflow_run(logger: MLFlowLogger, settings: dict, run_dir: Path, best_checkpoint: str | None) -> None:
    from mlflow.entities import Param, RunTag  # the mlflow extra: imported only by runs that log to MLflow

    client, run_id = logger.experiment, logger.run_id
    params = [Param(key, str(value)[:MAX_PARAM_VALUE]) for key, value in settings.items() if len(key) <= MAX_PARAM_KEY]
    tags = [RunTag("best_checkpoint", best_checkpoint or "(none saved)")]  # run_folder: tagged at its start
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
        client.log_batch(run_id, params=params[start : start + 100], tags=tags if start == 0 else [])
    for name, folder in ARTIFACTS.items():
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name), artifact_path=folder)


@contextlib.contextmanager
def failed_on_error(trainer: pl.Trainer):
    """An MLflow run whose training or testing failed, or whose record could not be written, ends FAILED. Lightning
    marks it so for an error inside fit and test only; after a successful fit it is FINISHED already. A pruned Optuna
    trial stopped as the search asked: FINISHED."""
    try:
        yield
    except BaseException as err:
        if type(err).__name__ != "TrialPruned":
            for logger in trainer.loggers:
                if isinstance(logger, MLFlowLogger):
                    logger.finalize("failed")
        raise


def tracker_lines(trainer: pl.Trainer, run_dir: Path) -> list[tuple[str, str]]:
    """(tracker, where to look) for each of the run's loggers, for the run's summary."""
    lines = []
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logs = Path("logs").resolve()
            logdir = "logs" if run_dir.resolve().is_relative_to(logs) else run_dir  # logs/ holds every run to compare
            lines.append(("tensorboard", f"tensorboard --logdir {logdir}"))
        elif isinstance(logger, MLFlowLogger):
            client = logger.experiment
            experiment = client.get_experiment(logger.experiment_id).name
            lines.append(("mlflow", f"mlflow ui --backend-store-uri {client.tracking_uri}  "
                                    f"# experiment {experiment}, run {logger.run_id}"))
        elif isinstance(logger, CSVLogger):
            lines.append(("csv", str(Path(logger.log_dir) / "metrics.csv")))
    return lines

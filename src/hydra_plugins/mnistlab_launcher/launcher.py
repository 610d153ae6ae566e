"""The sweeper and launcher themselves (see __init__.py)."""

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger("hydra.mnistlab_launcher")  # under "hydra": Hydra configures its console


class MnistlabLauncher(BasicLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Each job in turn, as Hydra's basic launcher runs them, each echoed as the user spelled it."""
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        runs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(as_typed(filter_overrides(overrides)))}")
            try:
                config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            except (HydraException, OmegaConfBaseException) as err:
                runs.append(self.record_failure(idx, list(overrides), err))
                continue
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = idx
            runs.append(run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=config,
                                job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs

    def record_failure(self, idx: int, overrides: list[str], err: Exception) -> JobReturn:
        """failure.json in the job's folder, as mnistlab.train.record_failure writes for a job that failed while it
        ran; its value is nan, which a search records as a failed trial."""
        from mnistlab.config import one_line

        message = one_line(err)
        subdir = OmegaConf.to_container(self.config.hydra.sweep)["subdir"]  # unresolved: ${hydra.job.num}, say
        folder = Path(str(self.config.hydra.sweep.dir)) / (str(idx) if "${" in subdir else subdir)
        (folder / ".hydra").mkdir(parents=True, exist_ok=True)  # the overrides where Hydra keeps a job's: the report
        OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
        failure = {"status": "failed", "error": message, "overrides": overrides, "traceback": ""}
        (folder / "failure.json").write_text(json.dumps(failure, indent=2) + "\n")
        print(f"error: job {idx} failed, the sweep goes on: {message}", file=sys.stderr)
        job = JobReturn(overrides=overrides, working_dir=str(folder), task_name="train", status=JobStatus.COMPLETED)
        job.return_value = float("nan")
        return job


class MnistlabSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Nothing here: the launcher composes each job and records one that does not compose as failed."""


def as_typed(overrides: list[str]) -> list[str]:
    """Overrides as the user typed them: mnistlab spells `trainer.NAME=VALUE` as `++trainer.NAME=VALUE` for Hydra
    (mnistlab.config.spell_trainer_overrides)."""
    return [arg.removeprefix("++") if arg.startswith("++trainer.") else arg for arg in overrides]

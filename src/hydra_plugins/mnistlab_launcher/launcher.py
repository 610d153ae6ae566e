"""The sweeper and launcher themselves (see __init__.py)."""

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mnistlab.config import as_typed
from mnistlab.errors import MnistlabError
from mnistlab.override_errors import one_line

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
        message = one_line(err)
        subdir = OmegaConf.to_container(self.config.hydra.sweep)["subdir"]  # unresolved: ${hydra.job.num}, say
        folder = Path(str(self.config.hydra.sweep.dir)) / (str(idx) if "${" in subdir else subdir)
        (folder / ".hydra").mkdir(parents=True, exist_ok=True)  # the overrides where Hydra keeps a job's: the report
        OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
        failure = {"status": "failed", "error": message, "overrides": overrides, "traceback": ""}
        (folder / "failure.json").write_text(json.dumps(failure, indent=2) + "\n")
        print(f"error: job {idx} failed, the sweep goes on: {message}", file=sys.stderr)
        return job_return(overrides, folder, float("nan"))


class MnistlabSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """Hydra's basic sweep, except into a folder that holds this sweep's jobs already (the same command rerun
        after a crash, a preemption or Ctrl-C): finished jobs are kept, the others resume or run again
        (mnistlab.sweep_plan), in any launcher; one line says which. Another sweep's folder is one line, and
        nothing is written there."""
        from mnistlab.sweep_plan import FINISHED, RERUN, finished_value, plan_sweep, set_aside

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = [job for batch in self.split_arguments(parser.parse_overrides([*self._parse_config(), *arguments]),
                                                      None) for job in batch]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        numbered = OmegaConf.to_container(self.config.hydra.sweep)["subdir"] == "${hydra.job.num}"
        try:
            plan = plan_sweep(sweep_dir, jobs, numbered)
        except MnistlabError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        if plan.continues():
            log.info(f"Continuing the sweep in {sweep_dir}: {plan.summary()}")
        returns = {}
        for num, state in enumerate(plan.states):
            if state == FINISHED:
                returns[num] = job_return(jobs[num], plan.folders[num], finished_value(plan.folders[num]))
            elif state == RERUN:
                set_aside(plan.folders[num])
        for start, stop in consecutive(plan.to_run()):
            returns |= dict(zip(range(start, stop), self.launch_jobs(jobs, range(start, stop)), strict=True))
        return [[returns[num] for num in range(len(jobs))]]

    def launch_jobs(self, jobs: list[list[str]], numbers: range) -> list[JobReturn]:
        """Jobs `numbers` (consecutive), in batches of hydra.sweeper.max_batch_size, numbered as in the whole
        sweep: a job's number names its folder."""
        size = self.max_batch_size or len(numbers)
        results = []
        for start in range(numbers.start, numbers.stop, size):
            batch = jobs[start:min(start + size, numbers.stop)]
            results += self.launcher.launch(batch, initial_job_idx=start)
        for result in results:
            _ = result.return_value  # raises, as in Hydra's sweeper, for a job whose exception was kept
        return results

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Nothing here: the launcher composes each job and records one that does not compose as failed."""


def consecutive(numbers: list[int]) -> list[tuple[int, int]]:
    """[2, 3, 4, 7] -> [(2, 5), (7, 8)]: the runs of consecutive job numbers, each one launcher call."""
    runs: list[tuple[int, int]] = []
    for num in numbers:
        if runs and runs[-1][1] == num:
            runs[-1] = (runs[-1][0], num + 1)
        else:
            runs.append((num, num + 1))
    return runs


def job_return(overrides: list[str], folder: Path, value: float | None) -> JobReturn:
    """What a job returns to the sweep without running here: one that did not compose (its value nan), or one that
    finished in an earlier run of the sweep (kept as it is)."""
    job = JobReturn(overrides=overrides, working_dir=str(folder), task_name="train", status=JobStatus.COMPLETED)
    job.return_value = value
    return job

"""A grid sweep rerun into its own folder continues it: what each job does, read from the job folders there.

A job folder holds `.hydra/overrides.yaml` (what the job ran) and then `metrics.json` (it finished), `failure.json`
(it failed), `checkpoints/last.ckpt` (it was cut short after an epoch) or nothing more (cut short before one). The
same command finds its own jobs there: finished ones are kept as they are, interrupted ones resume from their
`last.ckpt`, failed ones and those cut short before a checkpoint run again (what they left is kept in
`earlier-attempts/N/`). A folder that holds a job this command does not run belongs to another sweep: one line."""

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from mnistlab.callbacks.checkpointing import LAST
from mnistlab.config import as_typed
from mnistlab.errors import ConfigError
from mnistlab.sweep_results import read_record

EARLIER = "earlier-attempts"
FINISHED, RESUMED, RERUN, NEW = "finished", "resumed", "rerun", "new"


@dataclass
class SweepPlan:
    """Per job number, what it does: FINISHED (kept), RESUMED, RERUN or NEW; and each existing job's folder."""

    states: list[str]
    folders: dict[int, Path] = field(default_factory=dict)

    def summary(self) -> str:
        """"2 finished, 1 resumed, 1 rerun, 2 to run": what rerunning the sweep does."""
        counts = {state: self.states.count(state) for state in (FINISHED, RESUMED, RERUN, NEW)}
        return (f"{counts[FINISHED]} finished, {counts[RESUMED]} resumed, {counts[RERUN]} rerun, "
                f"{counts[NEW]} to run")

    def to_run(self) -> list[int]:
        return [num for num, state in enumerate(self.states) if state != FINISHED]

    def continues(self) -> bool:
        """Whether the folder held jobs of this sweep (something to say before it starts)."""
        return any(state != NEW for state in self.states)


def job_state(folder: Path) -> str:
    if read_record(folder / "metrics.json") is not None:
        return FINISHED
    if (folder / "checkpoints" / LAST).is_file() and not (folder / "failure.json").exists():
        return RESUMED
    return RERUN


def plan_sweep(sweep_dir: Path, jobs: list[list[str]], numbered: bool) -> SweepPlan:
    """What each of `jobs` (their overrides, in job order) does in `sweep_dir`. Existing job folders are matched
    to jobs by their overrides; `numbered`: the job folders are named by job number (Hydra's default
    hydra.sweep.subdir), so a job's folder must also bear its number."""
    plan = SweepPlan([NEW] * len(jobs))
    number = {tuple(overrides): num for num, overrides in enumerate(jobs)}
    held = sweep_dir.iterdir() if sweep_dir.is_dir() else ()
    for folder in sorted(path for path in held if path.is_dir() and (path / ".hydra").is_dir()):
        saved = folder / ".hydra" / "overrides.yaml"
        try:
            ran = tuple(yaml.safe_load(saved.read_text()) or ())
        except (OSError, yaml.YAMLError):
            ran = None
        num = number.get(ran) if ran is not None else None
        if num is None or (numbered and folder.name != str(num)) or num in plan.folders:
            what = "an unreadable job" if ran is None else f"a job of {' '.join(as_typed(list(ran))) or 'no overrides'}"
            raise ConfigError(f"{sweep_dir} holds the jobs of another sweep ({folder.name}/ is {what}, which this "
                              "command does not run): a sweep never overwrites another; rerun that sweep's own "
                              f"command to continue it, give another hydra.sweep.dir, or remove {sweep_dir}")
        plan.folders[num] = folder
        plan.states[num] = job_state(folder)
    return plan


def set_aside(folder: Path) -> Path | None:
    """Before a job runs again in its folder: what its earlier attempt left (everything but `.hydra/`) moves to
    `earlier-attempts/N/`, so that the new attempt's checkpoints and curves are its own and nothing is lost."""
    leftovers = [entry for entry in folder.iterdir() if entry.name not in (".hydra", EARLIER)]
    if not leftovers:
        return None
    attempts = folder / EARLIER
    place = attempts / str(len(list(attempts.iterdir())) + 1 if attempts.is_dir() else 1)
    place.mkdir(parents=True)
    for entry in leftovers:
        shutil.move(entry, place / entry.name)
    return place


def finished_value(folder: Path) -> float | None:
    """What a finished job returned to the sweep: its task's best validation value, from its metrics.json (the
    classification task's name where its saved config cannot be read)."""
    try:
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        config = None
    task = (config.get("task") if isinstance(config, dict) else None) or {}
    best = (task.get("metrics") or {}).get("best", "val/acc_best") if isinstance(task, dict) else "val/acc_best"
    return read_record(folder / "metrics.json").get(best)


def interrupted_job(run_dir: Path) -> str | None:
    """The last.ckpt that a job of mnistlab's grid sweeper resumes from: in a job's folder, one with no
    metrics.json is that job's own, cut short (the sweeper set aside what a job it runs again had left)."""
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN or not str(hydra.sweeper.get("_target_", "")).endswith(".MnistlabSweeper"):
        return None
    return str(run_dir / "checkpoints" / LAST) if job_state(run_dir) == RESUMED else None

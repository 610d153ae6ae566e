"""Composing configs/: where they are, their groups and options (mnistlab's and a hydra.searchpath's), the run config
of `python train.py` overrides with Trainer options spelled without `+`, the settings configs/ states (the only
defaults of what they configure), and what makes a dataset."""

import difflib
import functools
import inspect
import os
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from mnistlab.errors import ConfigError


def find_config_dir() -> Path:
    """The Hydra configs: shipped inside an installed wheel, or the repository's configs/ in a checkout."""
    packaged = Path(__file__).parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs"


CONFIG_DIR = find_config_dir()


def run_stamp() -> str:
    """The last part of a run folder's name: the time it starts, or in a SLURM batch job `slurm-JOBID` (with the
    array task), so that a job SLURM requeues comes back to its own folder and Lightning resumes it from the
    checkpoint it saved on SLURM's warning signal. Interactive allocations (srun bash) count as no job, as
    Lightning counts them."""
    job, name = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_JOB_NAME")
    if job is None or name in ("bash", "interactive"):
        return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"slurm-{array}_{task}" if array and task else f"slurm-{job}"


OmegaConf.register_new_resolver("run_stamp", run_stamp, replace=True)


def search_folders(args: list[str] = ()) -> list[Path]:
    """configs/, and the folders that a `hydra.searchpath=[file://DIR,...]` override adds: a user's own options
    (a task of their own, its model and data) beside mnistlab's."""
    folders = [CONFIG_DIR]
    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "hydra.searchpath":
            items = value.strip().removeprefix("[").removesuffix("]").split(",")
            folders += [Path(item.strip().strip("'\"").removeprefix("file://")) for item in items
                        if item.strip().strip("'\"").startswith("file://")]
    return folders


def groups(folders: list[Path] = (CONFIG_DIR,)) -> list[str]:
    """The config groups: the folders of configs/ (and of `folders`)."""
    return sorted({p.name for folder in folders if folder.is_dir() for p in folder.iterdir()
                   if p.is_dir() and not p.name.startswith((".", "_"))})


# Hydra's plugin groups that users pick from the command line.
PLUGIN_GROUPS = ("hydra/launcher", "hydra/sweeper")


def listed_groups(config_name: str) -> list[str]:
    """The config groups a primary config's defaults list holds, through the configs it includes (inspect.yaml:
    train.yaml): `GROUP=NAME` overrides these; any other group is added, `+GROUP=NAME`."""
    found = []
    for entry in OmegaConf.load(CONFIG_DIR / f"{config_name}.yaml").get("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            found += listed_groups(entry)
        elif OmegaConf.is_dict(entry):
            found += [name.removeprefix("optional ") for name in entry if name.removeprefix("optional ") in groups()]
    return found


def group_options(group: str, folders: list[Path] = (CONFIG_DIR,)) -> list[str]:
    """The options of a config group: its files in configs/ (and in `folders`), or for Hydra's launcher and
    sweeper groups, what the installed plugins offer."""
    if group in PLUGIN_GROUPS:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
    return sorted({p.stem for folder in folders for p in (folder / group).glob("*.yaml") if not p.stem.startswith("_")})


def shell_spelling(args: list[str]) -> list[str]:
    """Overrides as a user types them, in Hydra's grammar: a value starting with `~/` gets the home folder (the
    shell leaves `key=~/x` alone, and Hydra's grammar rejects it), and `ckpt_path=logs/epoch=3-step=99.ckpt`
    (Lightning's file names) is quoted. Values Hydra parses already (lists, quoted strings, sweeps) stay."""
    spelled = []
    for arg in args:
        key, equals, value = arg.partition("=")
        if equals and not arg.startswith("-") and (value == "~" or value.startswith("~/")):
            value = os.path.expanduser(value)
            arg = f"{key}={value}"
        plain = equals and not arg.startswith("-") and "=" in value and value[:1] not in "[{'\"" and "(" not in value
        spelled.append(f"{key}='{value}'" if plain and "'" not in value else arg)
    return spelled


def trainer_options() -> list[str]:
    """Every argument of Lightning's Trainer: each may be set as `trainer.NAME=VALUE`."""
    import pytorch_lightning as pl  # here: composing a config needs no Lightning otherwise
    return [name for name in inspect.signature(pl.Trainer.__init__).parameters if name != "self"]


def spell_trainer_overrides(args: list[str]) -> list[str]:
    """`trainer.NAME=VALUE` for any Trainer argument, whether configs/trainer lists it or not (Hydra would want
    `+trainer.NAME` for one it does not): such overrides become `++trainer.NAME=VALUE`, set or added. A name the
    Trainer does not take is one line naming the closest that it does."""
    options, spelled = trainer_options(), []
    for arg in args:
        key, equals, value = arg.partition("=")
        if not equals or not key.startswith("trainer.") or arg.startswith("-"):
            spelled.append(arg)
            continue
        name = key.removeprefix("trainer.").split(".")[0]
        if name not in options:
            close = difflib.get_close_matches(name, options, n=1)
            allowed = (f"did you mean trainer.{close[0]}?" if close
                       else f"Lightning's Trainer takes {', '.join(options)}")
            raise ConfigError(f"unknown key trainer.{name} in {arg!r}: {allowed}")
        spelled.append(f"++{key}={value}")
    return spelled


def as_typed(overrides: list[str]) -> list[str]:
    """Overrides as the user typed them: `++trainer.NAME=VALUE` back to `trainer.NAME=VALUE` (spell_trainer_overrides
    spells them so for Hydra)."""
    return [arg.removeprefix("++") if arg.startswith("++trainer.") else arg for arg in overrides]


def compose_run_config(args: list[str], output_dir: str | None = None) -> DictConfig:
    """The config a single run of `args` will get, with Hydra's own settings in place so that `${hydra:...}`
    resolves; the run folder is `output_dir`, or hydra.run.dir as Hydra would make it."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=spell_trainer_overrides(args), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = output_dir or cfg.hydra.run.dir
    HydraConfig.instance().set_config(cfg)
    return cfg


@functools.cache
def _composed(choices: tuple[str, ...]) -> DictConfig:
    """train.yaml composed with `choices`, read-only (shared by every caller)."""
    if GlobalHydra.instance().is_initialized():  # inside a run (a teacher read as it starts): the same configs/
        cfg = compose("train", overrides=list(choices))
    else:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=list(choices))
    OmegaConf.set_readonly(cfg, True)
    return cfg


def stated_settings(section: str, choices: tuple[str, ...] = ()) -> DictConfig | None:
    """`section` (`data`, `tricks`, `callbacks.ema`) of train.yaml composed with the group `choices`
    (`task=segmentation`): the settings configs/ states for it. The classes they configure take no defaults of
    their own, so this is where a setting missing from a checkpoint saved before it existed comes from. Unresolved:
    a key read from it resolves its interpolation against the whole composed config."""
    return OmegaConf.select(_composed(tuple(choices)), section)


def target_settings(section: str, target: str, choices: tuple[str, ...] = ()) -> DictConfig | None:
    """The settings configs/ states for the class `target` where it configures `section` (with the group `choices`
    laid under): in the run of a task that picks it, else of the `section` option that names it (the FCN's under
    task=segmentation, where its interpolations resolve; the ResNet's under model=resnet). None where no config
    names it (a user's own network, data module or task)."""
    candidates = [(*choices, f"task={task}") for task in group_options("task")]
    candidates += [(*choices, f"{section}={option}") for option in group_options(section)] if section in groups() \
        else []
    for chosen in candidates:
        stated = stated_settings(section, chosen)
        if stated is not None and stated.get("_target_") == target:
            return stated
    return None


def missing_settings(stated: DictConfig, given: dict) -> dict:
    """The settings `stated` (see stated_settings) holds that `given` lacks, resolved one by one, as plain values."""
    return {key: OmegaConf.to_object(stated[key]) if OmegaConf.is_config(stated[key]) else stated[key]
            for key in stated if not key.startswith("_") and key not in given}


DATASET_KEYS = ("name", "mean", "std", "image_size", "in_channels", "num_classes")  # what makes a dataset

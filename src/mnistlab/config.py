"""Composing configs/: the run config of `python train.py` overrides, the settings configs/ states (the only
defaults of what they configure), a dataset's identity, Trainer options spelled without `+`, and bad overrides as
one line."""

import difflib
import functools
import importlib
import importlib.metadata
import inspect
import os
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import HydraException, InstantiationException, OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict

from mnistlab.errors import ConfigError, MnistlabError


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


def groups() -> list[str]:
    """The config groups: the folders of configs/."""
    return sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


# Hydra's plugin groups that users pick from the command line, and the packages behind mnistlab's choices, which
# come with its sweep extra.
PLUGIN_GROUPS = ("hydra/launcher", "hydra/sweeper")
PLUGINS = {("hydra/sweeper", "mnistlab_optuna"): "optuna", ("hparams_search", "optuna"): "optuna",
           ("hydra/launcher", "joblib"): "hydra-joblib-launcher",
           ("hydra/launcher", "submitit_local"): "hydra-submitit-launcher",
           ("hydra/launcher", "submitit_slurm"): "hydra-submitit-launcher"}


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


def group_options(group: str) -> list[str]:
    """The options of a config group: its files in configs/, or for Hydra's launcher and sweeper groups, what
    the installed plugins offer."""
    if group in PLUGIN_GROUPS:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


# Choices whose library comes with an extra of the same name, checked by importing it (a library that is there
# but does not import needs the same reinstall).
EXTRA_MODULES = {("logger", "mlflow"): "mlflow"}


def missing_plugin(group: str, choice: str) -> str | None:
    """The install command for a choice whose Hydra plugin or library is not installed, or None."""
    if (group, choice) in EXTRA_MODULES:
        module = EXTRA_MODULES[group, choice]
        try:
            importlib.import_module(module)
            return None
        except ImportError:
            return install_hint(group, choice, module, extra=module)
    plugin = PLUGINS.get((group, choice))
    if plugin is None:
        return None
    try:
        importlib.metadata.version(plugin)
        return None
    except importlib.metadata.PackageNotFoundError:
        return install_hint(group, choice, plugin, extra="sweep")


def install_hint(group: str, choice: str, package: str, extra: str) -> str:
    return (f"{group}={choice} needs {package}, which is not installed: "
            f"pip install -e '.[{extra}]' (mnistlab's {extra} extra) installs it")


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


def unknown_choice(args: list[str], config_name: str = "train") -> str | None:
    """One line naming a config-group choice that has no file (`data=emnist`), or that needs a + because the primary
    config `config_name` does not list its group (`experiment=mixup`), or None.

    Hydra reports these as a multi-line block; checking first keeps bad input to one actionable line.
    """
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and a[0] != "-"])
    except Exception:
        return None  # not ours to judge: Hydra reports syntax errors itself
    for override in overrides:
        if override.is_delete() or override.key_or_group not in [*groups(), *PLUGIN_GROUPS]:
            continue
        value = override.value()
        if isinstance(value, ChoiceSweep):
            choices = list(override.sweep_string_iterator())
        elif isinstance(value, str):
            choices = [value]
        elif isinstance(value, list) and all(isinstance(choice, str) for choice in value):
            choices = value  # several options at once: logger=[tensorboard,mlflow]
        else:
            continue  # glob(...) and ranges: Hydra expands those against the folder
        options = group_options(override.key_or_group)
        for choice in choices:
            missing = missing_plugin(override.key_or_group, choice)
            if missing:
                return missing
            if choice not in options:
                return (f"unknown {override.key_or_group} '{choice}' (override {override.input_line}); "
                        f"choose one of: {', '.join(options)}")
        group, line = override.key_or_group, override.input_line
        if group in groups() and not (override.is_add() or override.is_force_add()) and \
                group not in listed_groups(config_name):
            return f"{line} needs a +: +{line} ({group} is not in the defaults list, so it is added)"
    return None


def unknown_key(args: list[str], base: DictConfig, choosable: list[str]) -> str | None:
    """One line naming the first override whose key `base` (a composed config) lacks, with the keys it has at
    that level and the closest one; None when every key exists (or is a group in `choosable`, or is added)."""
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and a[0] != "-"])
    except HydraException:
        return None  # a syntax error: Hydra's own line says where
    values = OmegaConf.to_container(base)  # unresolved: `???` and `${...}` stay text
    for override in overrides:
        if override.is_add() or override.is_force_add() or override.key_or_group in choosable:
            continue
        node, path = values, override.key_or_group.split(".")
        for depth, part in enumerate(path):
            if not isinstance(node, dict):
                break
            if part not in node:
                where = ".".join(path[:depth])
                keys = [key for key, value in node.items() if not isinstance(value, dict) or where]
                keys += [f"{group}=NAME" for group in choosable] if not where else []
                close = difflib.get_close_matches(part, list(node), n=1)
                hint = f"did you mean {'.'.join([*path[:depth], close[0]])}? " if close else ""
                return (f"unknown key {override.key_or_group!r} in {override.input_line!r}: {hint}"
                        f"{where + ' has' if where else 'allowed keys:'} {', '.join(keys)}")
            node = node[part]
    return None


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


HYDRA_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def as_typed(overrides: list[str]) -> list[str]:
    """Overrides as the user typed them: `++trainer.NAME=VALUE` back to `trainer.NAME=VALUE` (spell_trainer_overrides
    spells them so for Hydra)."""
    return [arg.removeprefix("++") if arg.startswith("++trainer.") else arg for arg in overrides]


def one_line(err: Exception) -> str:
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, MnistlabError):
        err = err.__cause__  # raised by our code inside a Hydra-instantiated target
    if isinstance(err, OverrideParseException):
        why = one_line(Exception(err.message.partition("See ")[0]))
        return (f"could not parse {err.override!r}: {why}; quote a value with spaces or special characters "
                f"(key='a b'); the grammar: {HYDRA_GRAMMAR}")
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


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


def target_settings(section: str, target: str) -> DictConfig | None:
    """The settings configs/ states for the class `target` where it configures `section`: in the run of a task that
    picks it, else of the `section` option that names it (the FCN's under task=segmentation, where its interpolations
    resolve; the ResNet's under model=resnet). None where no config names it (a user's own network)."""
    candidates = [(f"task={task}",) for task in group_options("task")]
    candidates += [(f"{section}={option}",) for option in group_options(section)] if section in groups() else []
    for choices in candidates:
        stated = stated_settings(section, choices)
        if stated is not None and stated.get("_target_") == target:
            return stated
    return None


def missing_settings(stated: DictConfig, given: dict) -> dict:
    """The settings `stated` (see stated_settings) holds that `given` lacks, resolved one by one, as plain values."""
    return {key: OmegaConf.to_object(stated[key]) if OmegaConf.is_config(stated[key]) else stated[key]
            for key in stated if not key.startswith("_") and key not in given}


DATASET_KEYS = ("name", "mean", "std", "image_size", "in_channels", "num_classes")  # what makes a dataset

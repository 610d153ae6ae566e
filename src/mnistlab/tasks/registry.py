"""The tasks a checkpoint may name, and a task rebuilt from its checkpoint with the data it was trained on.

A checkpoint is data: it names its task and data module (`Classifier.on_save_checkpoint`), and nothing it names is
imported. A task is known when it is one of mnistlab's, declared by a user's package under the `mnistlab.tasks`
entry point group, or registered in this process (`register_task`, or the task a run's own config names); a data
module when it is a known task's `DATA_MODULE` or a subclass of one already imported. Checkpoints written before
they named their task are recognised by the tasks themselves (`Classifier.recognises`).
"""

import inspect
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import OmegaConf

from mnistlab.checkpoints import MNISTLAB_KEY, existing_checkpoint, read_checkpoint, saved_network, unreadable_reason
from mnistlab.config import group_options, missing_settings, stated_settings, target_settings
from mnistlab.errors import ConfigError
from mnistlab.models.registry import class_name
from mnistlab.tasks.classification import Classifier
from mnistlab.validation import check_values

ENTRY_POINT_GROUP = "mnistlab.tasks"
# Named, not imported: a run imports the task it trains only.
BUILT_IN = ("mnistlab.tasks.classification.Classifier", "mnistlab.tasks.segmentation.Segmenter")
_registered: dict[str, type[Classifier]] = {}


def register_task(cls: type[Classifier], name: str | None = None) -> type[Classifier]:
    """Let checkpoints name the task `cls` (by `name`, else its module path); usable as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Classifier)):
        raise ConfigError(f"{cls!r} is not a mnistlab task (a subclass of mnistlab.tasks.classification.Classifier)")
    _registered[name or class_name(cls)] = cls
    return cls


def tasks() -> dict[str, type[Classifier]]:
    """Every known task by the name a checkpoint gives it."""
    from hydra.utils import get_class

    found = {name: get_class(name) for name in BUILT_IN}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.value.replace(":", ".") not in _registered:
            register_task(point.load(), point.value.replace(":", "."))
    return found | _registered


def register_config_task(task: Mapping) -> None:
    """Register the task a run's own config names (the user chose it), so that the run's checkpoints load in this
    process."""
    from hydra.utils import get_class

    if task["_target_"] not in BUILT_IN and task["_target_"] not in _registered:
        register_task(get_class(task["_target_"]), task["_target_"])


def task_class(saved: dict, what: str) -> type[Classifier]:
    """The task that wrote a checkpoint's contents: the one it names, or, for a checkpoint that names none, the most
    specific known task that recognises it."""
    known = tasks()
    written = saved.get(MNISTLAB_KEY) or {}
    name = written.get("task") if isinstance(written, dict) else None
    if name is None:
        by_depth = sorted(set(known.values()), key=lambda cls: len(cls.__mro__), reverse=True)
        return next(cls for cls in by_depth if cls.recognises(saved))
    if name not in known:
        raise ConfigError(f"{what}: its task {name!r} is not a known mnistlab task, and nothing of it ran; known: "
                          f"{', '.join(sorted(known))} (register your own with the {ENTRY_POINT_GROUP!r} entry point "
                          "or mnistlab.tasks.registry.register_task)")
    return known[name]


def task_option(kind: type[Classifier]) -> tuple[str, ...]:
    """The `task=NAME` choice of configs/ whose config names the task `kind`; none for a task of a user's own."""
    for task in group_options("task"):
        stated = stated_settings("task", (f"task={task}",))
        if stated is not None and stated.get("_target_") == class_name(kind):
            return (f"task={task}",)
    return ()


def load_task(checkpoint: str | Path, what: str) -> Classifier:
    """A trained task module (on the CPU) from a mnistlab checkpoint; `what` names the setting that pointed at it.
    Missing, corrupt and mismatched files end in one ConfigError line. Its hparams read no teacher and no transfer
    source: the saved weights already hold what they gave."""
    path = existing_checkpoint(checkpoint, what)
    saved = read_checkpoint(path, what)  # safe, and mnistlab's: else one line naming what is wrong
    kind = task_class(saved, f"{what}={checkpoint}")
    given = saved.get("hyper_parameters") or {}
    try:  # the rules a run's tricks pass in check_config, for settings that come from a file
        check_values(given, prefix="tricks")
    except ConfigError as err:
        raise ConfigError(f"{what}={checkpoint}: its {err}") from None
    saved_network(saved, f"{what}={checkpoint}")  # weights that do not fit their model config: one line
    # A checkpoint saved before a trick or a task setting existed lacks it: configs/ states it.
    choices = task_option(kind)
    missing = {**missing_settings(stated_settings("tricks", choices), given),
               **(missing_settings(stated_settings("task", choices), given) if choices else {})}
    missing.pop("metrics", None)  # the task config's metric names, not an argument
    try:
        # The saved weights are the whole network: the run's teacher and transfer source are neither reloaded nor
        # needed (they may be gone).
        return kind.load_from_checkpoint(path, map_location="cpu", **{
            **missing, "distill_teacher": None, "init_from": None, "freeze_conv": False})
    except Exception as err:
        raise ConfigError(f"{what}={checkpoint}: {unreadable_reason(err)}") from None


def data_module_class(saved: dict, task: type[Classifier], what: str) -> type[pl.LightningDataModule]:
    """The data module a checkpoint names: its task's DATA_MODULE or an imported subclass of it (for a checkpoint
    that names none, the task's DATA_MODULE)."""
    written = saved.get(MNISTLAB_KEY) or {}
    name = written.get("data") if isinstance(written, dict) else None
    if name is None:
        return task.DATA_MODULE
    family = [task.DATA_MODULE]
    for cls in family:
        family.extend(cls.__subclasses__())
    known = {class_name(cls): cls for cls in family}
    if name not in known:
        raise ConfigError(f"{what}: its data module {name!r} is not {class_name(task.DATA_MODULE)} or an imported "
                          "subclass of it; import the module that defines it first")
    return known[name]


def init_parameters(kind: type) -> set[str]:
    """The named parameters of a data module class and of the bases it hands `**kwargs` to."""
    found = set()
    for cls in kind.__mro__:
        if "__init__" in vars(cls) and issubclass(cls, pl.LightningDataModule) and cls is not pl.LightningDataModule:
            found |= {name for name, p in inspect.signature(cls.__init__).parameters.items()
                      if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return found


def stated_data_settings(kind: type, dataset: str | None) -> dict:
    """The data settings configs/ states for the data module `kind` and `dataset` (its data=NAME option, where
    there is one): what a checkpoint saved before a setting existed lacks. None for a data module no config names."""
    choices = (f"data={dataset}",) if dataset in group_options("data") else ()
    stated = target_settings("data", class_name(kind), choices)
    return missing_settings(stated, {}) if stated is not None else {}


def load_datamodule(checkpoint: str | Path, overrides: dict[str, object]) -> pl.LightningDataModule:
    """The data a checkpoint was trained on (its data module and that module's settings are saved in it), with
    `data.KEY=VALUE` overrides on top: another folder (`data.root`) or another dataset of the same format
    (`data.name`, `.mean`, `.std`). Downloading stays off unless `data.download=true`."""
    path = existing_checkpoint(checkpoint, "ckpt_path")
    contents = read_checkpoint(path, "ckpt_path")
    kind = data_module_class(contents, task_class(contents, f"ckpt_path={checkpoint}"), f"ckpt_path={checkpoint}")
    saved = contents.get("datamodule_hyper_parameters")
    run_config = path.resolve().parents[1] / ".hydra" / "config.yaml"  # older checkpoints: the run's config
    if saved is None and run_config.is_file():
        data = OmegaConf.load(run_config).data
        saved = {key: OmegaConf.to_object(data[key]) if OmegaConf.is_config(data[key]) else data[key]
                 for key in data if key != "_target_"}
    known = {**stated_data_settings(kind, (saved or {}).get("name")), **(saved or {})}
    settings = {**known, "download": False}
    for key, value in overrides.items():
        name = key.removeprefix("data.")
        if name not in known or name in ("augment", "recipe_augment"):
            allowed = ", ".join(f"data.{k}" for k in known if k not in ("augment", "recipe_augment"))
            raise ConfigError(f"unknown key {key!r}; allowed: {allowed}")
        settings[name] = setting_value(key, value, known[name])
    parameters = init_parameters(kind)
    return kind(**{name: value for name, value in settings.items() if name in parameters})


def setting_value(key: str, value: object, default: object) -> object:
    """`value` as the type of the setting's default (a command line's `data.val_size=1000` or `"1000"`)."""
    if value is None or default is None or isinstance(default, str):
        return value
    kind = type(default)
    if (kind is bool and not isinstance(value, bool)) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{key}={value}: takes {kind.__name__} values")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value}: takes {kind.__name__} values") from None

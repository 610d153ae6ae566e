"""The composed config checked before anything is trained or written: every key against what the code it
configures accepts (a typo, or a `+key=` that nothing reads, fails), and every value against its type and
range. Each problem is one line naming the key, the value and what is allowed."""

import inspect
import numbers
import types
import typing

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from typeguard import TypeCheckError, check_type

from mnistlab.checkpoints import existing_checkpoint, read_checkpoint, teacher_checkpoints
from mnistlab.errors import ConfigError
from mnistlab.models.registry import build_config_network
from mnistlab.override_errors import one_line

# The "-true" precisions other than 32 convert the weights, while the inspection callbacks feed them fp32 images.
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def integer(low: int | None = None, high: int | None = None):
    def check(value) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)
                and (high is None or value <= high))
    return check


def number(low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False):
    def check(value) -> bool:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return False
        above = low is None or (value > low if low_open else value >= low)
        below = high is None or (value < high if high_open else value <= high)
        return above and below
    return check


def one_of(*choices):
    return lambda value: value in choices


# key: (check, what is allowed). Keys that a config does not have are skipped. A rule that only the class that takes
# the value can state (the datasets it knows, a network's downsampling modes) is that class's alone.
RULES = {
    "seed": (integer(), "an integer"),
    "name": (lambda value: isinstance(value, str) and 0 < len(value) <= 100 and "/" not in value,
             "1 to 100 characters without / (it names the run's folder)"),
    "compile": (lambda value: isinstance(value, bool) or value in COMPILE_MODES,
                "true, false or one of " + ", ".join(COMPILE_MODES)),
    "task.metrics.mode": (one_of("max", "min"), "max or min"),
    "task.metrics.test": (lambda value: isinstance(value, list) and all(isinstance(name, str) for name in value),
                          "a list of metric names, e.g. [test/acc, test/loss]"),
    "logger.tensorboard.default_hp_metric": (one_of(True, False), "true or false"),
    "data.batch_size": (integer(1), "an integer >= 1"),
    "data.eval_batch_size": (integer(1), "an integer >= 1"),
    "data.val_size": (integer(0), "an integer >= 0 (0: no validation, every training image trains), below "
                      "the training set's size"),
    "data.train_size": (lambda value: value is None or integer(1)(value),
                        "null (every training image) or an integer >= 1, at most what data.val_size leaves"),
    "data.image_size": (integer(1), "an integer >= 1"),
    "data.num_classes": (integer(2), "an integer >= 2"),
    "data.mean": (number(0, 1), "in [0, 1] (pixels are scaled to [0, 1] first)"),
    "data.std": (number(0, low_open=True), "> 0"),
    "model.kernel_size": (integer(1), "an integer >= 1"),
    "model.dilation": (integer(1), "an integer >= 1"),
    "model.hidden": (integer(1), "an integer >= 1"),
    "model.batch_norm": (one_of(True, False), "true or false"),
    "model.dropout": (number(0, 1, high_open=True), "in [0, 1)"),
    "model.num_classes": (integer(2), "an integer >= 2"),
    "model.head_channels": (integer(1), "an integer >= 1"),
    "model.head_dilation": (integer(1), "an integer >= 1"),
    "optimizer.lr": (number(0, low_open=True), "> 0"),
    "optimizer.weight_decay": (number(0), ">= 0"),
    "optimizer.momentum": (number(0, 1, high_open=True), "in [0, 1)"),
    "scheduler.warmup_epochs": (number(0), ">= 0, below trainer.max_epochs"),
    "trainer.max_epochs": (integer(1), "an integer >= 1"),
    "trainer.accelerator": (one_of(*ACCELERATORS), "one of " + ", ".join(ACCELERATORS)),
    "trainer.precision": (one_of(*PRECISIONS), "one of " + ", ".join(PRECISIONS) + " (bf16-true, 16-true and 64-true "
                          "runs are not supported)"),
    "trainer.deterministic": (one_of(True, False, "warn"), "true, false or warn"),
    "tricks.label_smoothing": (number(0, 1, high_open=True), "in [0, 1)"),
    "tricks.mixup_alpha": (number(0), ">= 0 (0 turns mixup off)"),
    "tricks.cutmix_alpha": (number(0), ">= 0 (0 turns cutmix off)"),
    "tricks.mix_prob": (number(0, 1), "in [0, 1]"),
    "tricks.mix_off_last_epochs": (integer(0), "an integer >= 0"),
    "tricks.distill_teacher": (lambda value: value is None or isinstance(value, str) or (
        isinstance(value, list) and len(value) > 0 and all(isinstance(path, str) for path in value)),
        "null, a checkpoint path, or a list of them [A,B,...] (their ensemble is the teacher)"),
    "tricks.distill_weight": (number(0, 1), "in [0, 1]"),
    "tricks.distill_temperature": (number(0, low_open=True), "> 0"),
    "tricks.no_bias_decay": (one_of(True, False), "true or false"),
    "tricks.linear_lr_scaling": (one_of(True, False), "true or false"),
    "tricks.init_from": (lambda value: value is None or isinstance(value, str), "null or one checkpoint path"),
    "tricks.freeze_conv": (one_of(True, False), "true or false"),
    "tricks.channels_last": (one_of(True, False, "auto"), "true, false or auto"),
    "verbose": (one_of(True, False), "true or false"),
    "data.seed": (integer(0, 2**32 - 1), "an integer in [0, 2**32)"),
    "data.in_channels": (integer(1), "an integer >= 1"),
    "data.download": (one_of(True, False), "true or false"),
    "scheduler.warmup_start_factor": (number(0, 1, low_open=True), "in (0, 1]"),
    "scheduler.warmup_min_steps": (integer(0), "an integer >= 0"),
    "trainer.log_every_n_steps": (integer(1), "an integer >= 1"),
    "trainer.accumulate_grad_batches": (one_of(1), "1: mnistlab runs its optimizer steps itself "
                                        "(data.steps_per_execution), which Lightning's accumulation does not support; "
                                        "for a larger effective batch, raise data.batch_size (with "
                                        "tricks.linear_lr_scaling=true)"),
    "data.steps_per_execution": (lambda value: value == "auto" or integer(1)(value), "auto or an integer >= 1"),
    "trainer.check_val_every_n_epoch": (lambda value: value is None or integer(1)(value), "null or an integer >= 1"),
    "callbacks.model_checkpoint.save_top_k": (integer(-1), "an integer >= -1 (-1: every checkpoint, 0: none)"),
    "callbacks.model_checkpoint.mode": (one_of("max", "min"), "max or min"),
    "callbacks.progress_bar.refresh_rate": (integer(0), "an integer >= 0 (0: no progress bar)"),
    "callbacks.not_learning.min_steps": (integer(0), "an integer >= 0"),
    "callbacks.not_learning.tolerance": (number(0, 1, low_open=True, high_open=True), "in (0, 1)"),
    "callbacks.validation_analysis.calibration_bins": (integer(1), "an integer >= 1"),
    **{f"callbacks.{name}": (integer(0), "an integer >= 0 (0 = never)")
       for name in ("filters.every_n_epochs", "feature_maps.every_n_epochs", "histograms.every_n_epochs",
                    "validation_analysis.figures_every_n_epochs", "segmentation_views.every_n_epochs")},
    **{f"callbacks.{name}": (integer(0), "an integer >= 0 (0 = none)")
       for name in ("feature_maps.num_images", "first_batch.num_images", "validation_analysis.num_mistakes",
                    "embedding.num_images", "segmentation_views.num_images")},
    # The per-image augmentation (data.augment, and what data.augment=recipe picks).
    **{f"data.{group}.{name}": (check, allowed) for group in ("augment", "recipe_augment")
       for name, check, allowed in [("degrees", number(0, 180), "in [0, 180]"),
                                    ("translate", number(0, 1), "in [0, 1]"),
                                    ("scale", number(0, 1, high_open=True), "in [0, 1)"),
                                    ("hflip", number(0, 1), "in [0, 1]"), ("erase", number(0, 1), "in [0, 1]")]},
}


def check_values(values: dict, prefix: str = "") -> None:
    """Apply RULES to a flat or nested dict of settings (keys relative to `prefix`)."""
    for key, (check, allowed) in RULES.items():
        if prefix:
            if not key.startswith(prefix + "."):
                continue
            name = key[len(prefix) + 1 :]
        else:
            name = key
        value = values
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            if not check(value):
                shown = repr(value) if isinstance(value, str) else value
                raise ConfigError(f"{key}={shown} must be {allowed}")


def accepted_keys(target: str, skip: tuple[str, ...] = ()) -> set[str] | None:
    """The keyword arguments `target` takes, or None when it takes any (**kwargs). A class whose **kwargs go to
    its base class (a task built on another, a data module on another) takes its own and its bases' arguments."""
    obj = get_object(target)
    classes = inspect.getmro(obj) if inspect.isclass(obj) else (obj,)
    names = set()
    for cls in classes:
        parameters = list(inspect.signature(cls).parameters.values())
        names |= {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return names - set(skip)
    return None


def check_keys(section: str, settings: dict, target: str, skip: tuple[str, ...] = ()) -> None:
    """Every key of `settings` is an argument of `target`, and its value has the argument's annotated type."""
    allowed = accepted_keys(target, skip)
    if allowed is not None:
        for key in settings:
            if not key.startswith("_") and key not in allowed:
                raise ConfigError(f"unknown key {section}.{key}: {target} takes {', '.join(sorted(allowed))}")
    hints = annotations(target)
    for key, value in settings.items():
        if key.startswith("_") or key not in hints or key in skip or configures_objects(value):
            continue
        if not has_type(value, hints[key]):
            shown = repr(value) if isinstance(value, str) else value
            raise ConfigError(f"{section}.{key}={shown} must be {describe(hints[key])}")


def has_type(value, hint) -> bool:
    """Whether `value` fits the annotation `hint`; a YAML list stands for a tuple too."""
    for candidate in [value, tuple(value)] if isinstance(value, list) else [value]:
        try:
            check_type(candidate, hint)
            return True
        except TypeCheckError:
            pass
    return False


def annotations(target: str) -> dict:
    """The annotated types of `target`'s arguments, its base classes' included (for arguments it passes on);
    none where they do not resolve (the keys are still checked)."""
    obj = get_object(target)
    hints = {}
    for cls in reversed(inspect.getmro(obj) if inspect.isclass(obj) else (obj,)):  # a subclass's own win
        try:
            hints |= typing.get_type_hints(cls.__init__ if inspect.isclass(cls) else cls)
        except Exception:
            continue
    return hints


def configures_objects(value) -> bool:
    """A value Hydra turns into objects (`_target_` dicts, lists of them): their own keys are theirs to check."""
    items = value if isinstance(value, list) else [value]
    return any(isinstance(item, dict) and "_target_" in item for item in items)


def describe(hint) -> str:
    """A type annotation as a user reads it: `Optional[int]` -> `an integer or null`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(arg) for arg in args))
    if origin is typing.Literal:
        return "one of " + ", ".join(str(arg) for arg in args)
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        return f"a list{' of ' + describe(args[0]).removeprefix('an ').removeprefix('a ') + 's' if args else ''}"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_config(cfg: DictConfig) -> None:
    """Everything `train` will read, before it builds or writes anything."""
    try:
        settings = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else
                    cfg[key] for key in cfg if key != "hydra"}
    except OmegaConfBaseException as err:  # ${oc.env:UNSET}, a missing key: the value that cannot be resolved
        raise ConfigError(one_line(err)) from None
    check_values(settings)
    for section in ("data", "model", "optimizer", "trainer"):
        if isinstance(settings.get(section), dict) and "_target_" in settings[section]:
            check_keys(section, settings[section], settings[section]["_target_"], skip=("params",))
    scheduler = settings.get("scheduler") or {}
    if "_target_" in scheduler:
        check_keys("scheduler", scheduler, scheduler["_target_"], skip=("optimizer", "total_steps", "steps_per_epoch"))
    task = settings.get("task") or {}
    if "_target_" in task:
        check_keys("tricks", settings.get("tricks", {}), task["_target_"], skip=("model", "optimizer", "scheduler"))
    for group in ("callbacks", "logger"):
        for name, part in (settings.get(group) or {}).items():
            if isinstance(part, dict) and "_target_" in part:
                check_keys(f"{group}.{name}", part, part["_target_"])
    if (settings.get("data") or {}).get("val_size") == 0 and optuna_search():
        raise ConfigError(f"data.val_size=0 leaves the Optuna search nothing to optimise (it optimises "
                          f"{task.get('metrics', {}).get('best')}): "
                          "keep a validation split for the search, and use val_size=0 for the final fit")
    tricks = settings.get("tricks") or {}
    teachers = teacher_checkpoints(tricks.get("distill_teacher"))
    for path in teachers:  # a missing member named before any is read
        existing_checkpoint(path, "tricks.distill_teacher")
    for path in teachers:
        read_checkpoint(path, "tricks.distill_teacher")
    if tricks.get("init_from"):
        read_checkpoint(tricks["init_from"], "tricks.init_from")
    for section in ("data", "model"):
        # The network and the data module themselves: settings that only make sense together (ResNet-B needs
        # bottleneck blocks, a canvas holds its digits) fail here, before a run folder exists. Building them
        # costs milliseconds (the data module reads its files later, in setup).
        if "_target_" in (settings.get(section) or {}):
            try:
                build_config_network(settings[section]) if section == "model" else instantiate(settings[section])
            except InstantiationException as err:
                raise ConfigError(one_line(err)) from None
    warmup, epochs = scheduler.get("warmup_epochs", 0), settings["trainer"].get("max_epochs")
    if isinstance(epochs, int) and epochs > 0 and warmup >= epochs:
        shorter = f"scheduler.warmup_epochs={epochs / 2:g}" if epochs > 1 else "scheduler.warmup_epochs=0"
        raise ConfigError(f"scheduler.warmup_epochs={warmup} must be below trainer.max_epochs={epochs}: warmup "
                          f"must end before training does; add {shorter}, or train longer "
                          f"(trainer.max_epochs={int(warmup) + 1} or more)")


def optuna_search() -> bool:
    """Whether this run is a trial of an Optuna search (hparams_search=optuna, or hydra/sweeper=optuna)."""
    return HydraConfig.initialized() and "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")).lower()

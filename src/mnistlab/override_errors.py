"""One line for a command line that Hydra would refuse or answer in a block: a choice with no file, a key that
does not exist (with the closest one), a choice whose plugin or library is not installed, Hydra's own errors."""

import difflib
import importlib
import importlib.metadata

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import HydraException, InstantiationException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from mnistlab.config import PLUGIN_GROUPS, group_options, groups, listed_groups, search_folders
from mnistlab.errors import MnistlabError

# The packages behind mnistlab's choices, which come with its sweep extra.
PLUGINS = {("hydra/sweeper", "mnistlab_optuna"): "optuna", ("hparams_search", "optuna"): "optuna",
           ("hydra/launcher", "joblib"): "hydra-joblib-launcher",
           ("hydra/launcher", "submitit_local"): "hydra-submitit-launcher",
           ("hydra/launcher", "submitit_slurm"): "hydra-submitit-launcher"}

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


def unknown_choice(args: list[str], config_name: str = "train") -> str | None:
    """One line naming a config-group choice that has no file (`data=emnist`), or that needs a + because the primary
    config `config_name` does not list its group (`experiment=mixup`), or None.

    Hydra reports these as a multi-line block; checking first keeps bad input to one actionable line.
    """
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and a[0] != "-"])
    except Exception:
        return None  # not ours to judge: Hydra reports syntax errors itself
    folders = search_folders(args)
    for override in overrides:
        if override.is_delete() or override.key_or_group not in [*groups(folders), *PLUGIN_GROUPS]:
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
        options = group_options(override.key_or_group, folders)
        for choice in choices:
            missing = missing_plugin(override.key_or_group, choice)
            if missing:
                return missing
            if choice not in options:
                return (f"unknown {override.key_or_group} '{choice}' (override {override.input_line}); "
                        f"choose one of: {', '.join(options)}")
        group, line = override.key_or_group, override.input_line
        if group in groups(folders) and not (override.is_add() or override.is_force_add()) and \
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


HYDRA_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def one_line(err: Exception) -> str:
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, MnistlabError):
        err = err.__cause__  # raised by our code inside a Hydra-instantiated target
    if isinstance(err, OverrideParseException):
        why = one_line(Exception(err.message.partition("See ")[0]))
        return (f"could not parse {err.override!r}: {why}; quote a value with spaces or special characters "
                f"(key='a b'); the grammar: {HYDRA_GRAMMAR}")
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__

"""The networks a checkpoint may name. A checkpoint is data: the model config saved in it only picks one of these
classes and gives it plain arguments. Nothing it names is imported or called unless it is registered here: the
classes of `mnistlab.models`, those a user's package declares under the `mnistlab.networks` entry point group,
and those registered in this process (`register_network`, or the network a run's own config names)."""

import inspect
from collections.abc import Mapping
from importlib.metadata import entry_points

from torch import nn

from mnistlab.config import missing_settings, target_settings
from mnistlab.errors import ConfigError
from mnistlab.models.contract import current_target

ENTRY_POINT_GROUP = "mnistlab.networks"
# mnistlab's networks by the `_target_` of their configs, named rather than imported: models/ builds on this module.
BUILT_IN = {"mnistlab.models.SeedNet": "mnistlab.models.seed.SeedNet",
            "mnistlab.models.ResNet": "mnistlab.models.resnet.ResNet",
            "mnistlab.models.FCN": "mnistlab.models.fcn.FCN"}
_registered: dict[str, type[nn.Module]] = {}


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_network(cls: type[nn.Module], name: str | None = None) -> type[nn.Module]:
    """Let checkpoints name `cls` (by `name`, else its module path); usable as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"{cls!r} is not a torch.nn.Module class: only networks can be registered")
    _registered[name or class_name(cls)] = cls
    return cls


def networks() -> dict[str, type[nn.Module]]:
    """Every registered network by the `_target_` that names it."""
    from hydra.utils import get_class

    found = {target: get_class(path) for target, path in BUILT_IN.items()}
    found |= {class_name(cls): cls for cls in found.values()}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.value.replace(":", ".") not in _registered:
            register_network(point.load(), point.value.replace(":", "."))
    return found | _registered


def register_config_networks(model: Mapping) -> None:
    """Register every network a run's own config names (the user chose them, on the command line or in a yaml),
    so that the checkpoints of this run load in this process."""
    from hydra.utils import get_class

    for config in _nested_configs(model):
        target = current_target(config)["_target_"]
        if target not in networks():
            register_network(get_class(target), target)


def build_network(model: Mapping, what: str = "model") -> nn.Module:
    """The network a model config describes: registered classes only, plain arguments only, nested networks (an
    FCN's backbone) built the same way, a setting of mnistlab's networks that the config leaves out as configs/model/
    states it. Anything else is one ConfigError line naming `what`, before anything is called."""
    check_network_config(model, what)
    return _build(model)


def check_network_config(model: object, what: str) -> None:
    """Raise one ConfigError line if `model` names anything but registered networks, or holds anything but plain
    values."""
    if not isinstance(model, Mapping) or "_target_" not in model:
        raise ConfigError(f"{what}: its model config is not a network's (a mapping with _target_)")
    known = networks()
    for config in _nested_configs(model):
        target = current_target(config)["_target_"]
        if not isinstance(target, str) or target not in known:
            allowed = ", ".join(sorted(name for name in known if not name.startswith("mnistlab.models.")) or
                                sorted(known))
            raise ConfigError(f"{what}: its network {target!r} is not a registered mnistlab network, and nothing "
                              f"of it ran; registered: {allowed} (register your own with the {ENTRY_POINT_GROUP!r} "
                              "entry point or mnistlab.models.register_network)")
        special = sorted(key for key in config if isinstance(key, str) and key.startswith("_") and key != "_target_")
        if special:
            raise ConfigError(f"{what}: its model config holds {special[0]!r}: a network's config holds its "
                              "_target_ and plain arguments only")
    _check_plain(model, what)


def _nested_configs(value: object):
    """Every mapping with a `_target_` in `value`, outermost first."""
    if isinstance(value, Mapping):
        if "_target_" in value:
            yield value
        for item in value.values():
            yield from _nested_configs(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _nested_configs(item)


def _check_plain(value: object, what: str) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{what}: its model config has a key of type {type(key).__name__}")
            _check_plain(item, what)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_plain(item, what)
    elif not (value is None or isinstance(value, bool | int | float | str)):
        raise ConfigError(f"{what}: its model config holds a {type(value).__name__}, not a plain value")


def build_config_network(model: Mapping) -> nn.Module:
    """The network a run's own config describes, its networks registered first (the user chose them): Hydra builds
    the top level (any failure one InstantiationException), which builds the networks nested in it (an FCN's
    backbone) through build_network."""
    from hydra.utils import instantiate

    register_config_networks(model)
    return instantiate(model, _recursive_=False, _convert_="all")


def stated_network_settings(cls: type[nn.Module], target: str, given: Mapping) -> dict:
    """The settings configs/model/ states for the network `target` that `given` lacks, where it lacks one that `cls`
    requires: a checkpoint saved before a setting existed, an FCN's backbone (its config names the network and its
    input alone). Nothing where no config names the network (a user's own keeps its signature's defaults)."""
    required = [p.name for p in inspect.signature(cls).parameters.values() if p.default is inspect.Parameter.empty
                and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if all(name in given for name in required):
        return {}
    stated = target_settings("model", target)
    return {} if stated is None else missing_settings(stated, given)


def _build(value: object) -> object:
    if isinstance(value, Mapping):
        if "_target_" not in value:
            return {key: _build(item) for key, item in value.items()}
        target = current_target(value)["_target_"]
        cls, given = networks()[target], {key: item for key, item in value.items() if key != "_target_"}
        settings = {**stated_network_settings(cls, target, given), **given}
        return cls(**{key: _build(item) for key, item in settings.items()})
    if isinstance(value, list | tuple):
        return [_build(item) for item in value]
    return value

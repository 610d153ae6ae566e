"""Composing configs/: the run config of `python train.py` overrides, a dataset's identity, Trainer options
spelled without `+`, and bad overrides as one line."""

import difflib
import inspect
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import InstantiationException
from omegaconf import DictConfig, open_dict

from mnistlab.errors import ConfigError, MnistlabError


def find_config_dir() -> Path:
    """The Hydra configs: shipped inside an installed wheel, or the repository's configs/ in a checkout."""
    packaged = Path(__file__).parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs"


CONFIG_DIR = find_config_dir()
def unknown_choice(args: list[str], config_dir: Path = CONFIG_DIR) -> str | None:
    """One line naming a config-group choice that has no file (`data=emnist`), or None.

    Hydra reports these as a multi-line block; checking first keeps bad input to one actionable line.
    """
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and a[0] != "-"])
    except Exception:
        return None  # not ours to judge: Hydra reports syntax errors itself
    for override in overrides:
        group = config_dir / override.key_or_group
        if override.is_delete() or not group.is_dir():
            continue
        value = override.value()
        if isinstance(value, ChoiceSweep):
            choices = list(override.sweep_string_iterator())
        elif isinstance(value, str):
            choices = [value]
        else:
            continue  # glob(...) and ranges: Hydra expands those against the folder
        options = sorted(p.stem for p in group.glob("*.yaml") if not p.stem.startswith("_"))
        for choice in choices:
            if choice not in options:
                return (f"unknown {override.key_or_group} '{choice}' (override {override.input_line}); "
                        f"choose one of: {', '.join(options)}")
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


def one_line(err: Exception) -> str:
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, MnistlabError):
        err = err.__cause__  # raised by our code inside a Hydra-instantiated target
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


DATASET_KEYS = ("name", "mean", "std", "image_size", "in_channels", "num_classes")


def dataset_settings(choice: str) -> dict[str, str]:
    """What makes the dataset of `data=CHOICE` itself (DATASET_KEYS, as `data.KEY` override text): for a tool that
    takes the rest of its data settings (the folder, batch sizes) from a checkpoint."""
    problem = unknown_choice([f"data={choice}"])
    if problem:
        raise ConfigError(problem)
    data = compose_run_config([f"data={choice}"]).data
    return {f"data.{key}": str(data[key]) for key in DATASET_KEYS}



"""Every tool's command line is `python train.py`'s: Hydra overrides, composed from configs/ with the tool's own
primary config (configs/eval.yaml, predict.yaml, export.yaml, inspect.yaml) as train.py composes train.yaml.

    mnistlab-eval ckpt_path=CKPT data=fashion_mnist data.root=DIR
    mnistlab-predict ckpt_path=CKPT images=[seven.png,shoe.jpg] top=5

`--help` prints the tool's usage and the config groups it takes. Bad input is one `error:` line, exit status 2.
"""

import logging
import sys
import warnings
from collections.abc import Callable

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from mnistlab.config import CONFIG_DIR, group_options, groups, listed_groups, shell_spelling, spell_trainer_overrides
from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.override_errors import one_line, unknown_choice, unknown_key


def tool_groups(config_name: str) -> list[str]:
    """The config groups a primary config composes that a user picks from (Hydra's own settings aside)."""
    return [group for group in listed_groups(config_name) if group != "hydra"]


def groups_help(config_name: str) -> str:
    chosen = tool_groups(config_name)
    lines = [f"  {group:<15}{', '.join(group_options(group))}" for group in chosen]
    if "model" in chosen:  # a run's config: experiments go on top of it
        lines.append(f"  {'+experiment':<15}{', '.join(group_options('experiment'))}")
    return "config groups (group=OPTION picks configs/GROUP/OPTION.yaml; group.KEY=VALUE changes one value):\n" + \
        "\n".join(lines) if lines else ""


def open_groups(args: list[str], base: DictConfig) -> list[str]:
    """`data.root=DIR` where the tool's config has no `data` yet (no data=NAME given): the key is added
    (`++data.root=DIR`), for the tool to lay over the checkpoint's own settings."""
    spelled = []
    for arg in args:
        root = arg.split("=", 1)[0].split(".", 1)[0]
        opened = "=" in arg and "." in arg.split("=", 1)[0] and root in groups() and root not in (*base, "hydra")
        spelled.append(f"++{arg}" if opened and not arg.startswith(("+", "~")) else arg)
    return spelled


def compose_tool(config_name: str, args: list[str]) -> DictConfig:
    """configs/CONFIG_NAME.yaml with the overrides `args`; every `???` value must be given."""
    problem = unknown_choice(args, config_name)
    if problem:
        raise ConfigError(problem)
    args = shell_spelling(spell_trainer_overrides(args))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        base = compose(config_name)
        args = open_groups(args, base)
        try:
            cfg = compose(config_name, overrides=args)
        except HydraException as err:
            raise ConfigError(unknown_key(args, base, tool_groups(config_name)) or one_line(err)) from None
    missing = [key for key in cfg if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise ConfigError(f"missing {missing[0]}=...: it is required (see --help)")
    return cfg


def given_keys(args: list[str], group: str) -> set[str]:
    """The keys of `group` that the command line sets itself (`data.root=DIR` -> root)."""
    keys = (arg.lstrip("+~").split("=", 1)[0] for arg in args)
    return {key.removeprefix(f"{group}.") for key in keys if key.startswith(f"{group}.")}


def run_tool(tool: Callable[[DictConfig, list[str]], None], config_name: str, usage: str,
             argv: list[str] | None = None) -> None:
    """Compose the tool's config from the command line and run the tool on it (with the command line, for tools
    that lay given keys over a checkpoint's settings); `-h/--help` prints the usage and the groups."""
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(usage.strip() + "\n\n" + groups_help(config_name))
        return
    # The tools print their own results: Lightning's start-up chatter ("GPU available", tips) is noise here.
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        tool(compose_tool(config_name, argv), argv)
    except MnistlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

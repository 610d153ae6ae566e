"""The `key=value` command lines of the checkpoint tools (mnistlab-eval, -predict, -export), in the spelling of
`python train.py` overrides: `ckpt_path=PATH`, `images=[a.png,b.jpg]`, `data.root=DIR`.

Everything up to the first `=` is the key, so file names that contain `=` (Lightning's `epoch=3-step=99.ckpt`)
need no quoting. Bad input ends in one line and exit status 2.
"""

import logging
import sys
import warnings
from collections.abc import Callable

from mnistlab.errors import ConfigError, MnistlabError

REQUIRED = object()  # an option without a default: the command line must give it


def parse_value(text: str, default: object) -> object:
    """`[a,b]` is a list; otherwise the value takes the type of the option's default (int, float, bool, str)."""
    if text.startswith("[") and text.endswith("]"):
        return [item.strip() for item in text[1:-1].split(",") if item.strip()]
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError("true or false")
        return text.lower() == "true"
    if isinstance(default, int | float):
        return type(default)(text)
    return None if text == "null" else text


def parse_args(argv: list[str], options: dict[str, object], passthrough: str | None = None) -> dict:
    """The options (with their defaults filled in) from `key=value` arguments. Keys under `passthrough + "."`
    (e.g. `data.root`) are kept as strings under their full name, for the caller to check."""
    values = {}
    for arg in argv:
        key, equals, text = arg.partition("=")
        if not equals or not key:
            raise ConfigError(f"argument {arg!r} is not key=value; allowed keys: {', '.join(options)}")
        if passthrough and (key == passthrough or key.startswith(passthrough + ".")):
            values[key] = text  # a group choice (`data=fashion_mnist`) or one of its keys, for the caller
            continue
        if key not in options:
            extra = f", {passthrough}=NAME, {passthrough}.KEY" if passthrough else ""
            raise ConfigError(f"unknown key {key!r} in {arg!r}; allowed keys: {', '.join(options)}{extra}")
        default = options[key]
        try:
            values[key] = parse_value(text, default)
        except ValueError as err:
            raise ConfigError(f"{arg}: {key} takes {type(default).__name__} values ({err})") from None
    missing = [key for key, default in options.items() if default is REQUIRED and key not in values]
    if missing:
        raise ConfigError(f"missing {missing[0]}=...: it is required (see --help)")
    return {key: default for key, default in options.items()} | values


def run_tool(tool: Callable[[list[str]], None], usage: str, argv: list[str] | None = None) -> None:
    """Run a tool's body; `-h/--help` prints its usage, bad input (MnistlabError) one `error:` line, exit 2."""
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(usage.strip())
        return
    # The tools print their own results: Lightning's start-up chatter ("GPU available", tips) is noise here.
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        tool(argv)
    except MnistlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

"""Every command in the README and docs/ composes: each `python train.py` line (a sweep as its first job) passes
the checks a run makes before it starts, and each tool line composes the tool's config. Paths the reader fills
in (checkpoints, teachers) are not looked up."""

import re
import shlex

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from mnistlab import validation
from mnistlab.config import compose_run_config, shell_spelling, spell_trainer_overrides
from mnistlab.override_errors import unknown_choice
from mnistlab.tools.benchmark import parse_args as bench_args
from mnistlab.tools.cli import compose_tool
from mnistlab.validation import check_config

from .conftest import REPO

TOOLS = {"mnistlab-eval": "eval", "mnistlab-predict": "predict", "mnistlab-export": "export",
         "mnistlab-inspect": "inspect"}
FENCE = re.compile(r"```(?:bash|sh)\n(.*?)```", re.DOTALL)


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, words) of every train.py, Hydra tool and benchmark command in a ```bash block."""
    commands = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in FENCE.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" # ")[0].strip()
                if not line or line.startswith("#"):
                    continue
                for part in re.split(r"&&|\|\||;|\|", line):
                    words = shlex.split(part)
                    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # OMP_NUM_THREADS=1 ...
                        words = words[1:]
                    if words[:1] in (["python"], ["python3"], [".venv/bin/python"]) and words[1:2] == ["train.py"]:
                        words = ["mnistlab-train", *words[2:]]
                    if words and words[0] in ("mnistlab-train", "mnistlab-bench", *TOOLS):
                        commands.append((f"{page.name}: {' '.join(words)}", words))
    return commands


def first_job(args: list[str]) -> list[str]:
    """The overrides of a sweep's first job: each sweep (a,b / range / glob) at its first value."""
    job = []
    for arg in args:
        if arg.startswith("-") or arg == "job":  # -m, --cfg job, --help
            continue
        if "glob(" in arg:
            continue  # glob(*) over experiments: every one of them composes (test_config)
        (override,) = OverridesParser.create().parse_overrides([arg])
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            arg = f"{arg.split('=', 1)[0]}={first}"
        job.append(arg)
    return job


COMMANDS = documented_commands()


def test_the_docs_hold_commands_to_check():
    names = {words[0] for _, words in COMMANDS}
    assert {"mnistlab-train", "mnistlab-eval", "mnistlab-inspect", "mnistlab-bench"} <= names


@pytest.mark.parametrize(("where", "words"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_a_documented_command_composes(where, words, monkeypatch, tmp_path):
    monkeypatch.setattr(validation, "existing_checkpoint", lambda path, key: path)  # the reader's own files
    monkeypatch.setattr(validation, "read_checkpoint", lambda path, key: {})
    command, args = words[0], words[1:]
    if command == "mnistlab-bench":
        bench_args(args)
    elif command in TOOLS:
        if "--help" not in args and "-h" not in args:
            compose_tool(TOOLS[command], args)
    else:
        job = first_job(shell_spelling(args))
        assert unknown_choice(job) is None
        cfg = compose_run_config([*spell_trainer_overrides(job), "hydra.job.num=0"], output_dir=str(tmp_path))
        check_config(cfg)

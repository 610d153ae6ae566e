"""Untrusted and unreadable checkpoints, wherever a checkpoint is read (resume, teacher, transfer source, every
tool): one line naming the setting and what is wrong, nothing of the file executed, no run folder made."""

import os
from pathlib import Path

import pytest
import torch

from mnistlab.checkpoints import CHECKPOINT_FORMAT, MNISTLAB_KEY
from mnistlab.errors import ConfigError
from mnistlab.tools.evaluate import main as evaluate_main
from mnistlab.tools.export import main as export_main
from mnistlab.tools.predict import main as predict_main
from mnistlab.train import precheck

from .conftest import run_in_process

MARKER = "mnistlab-test-pwned"


class RunsAShellCommand:
    """What a malicious pickle holds: unpickling it would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def files(tmp_path) -> dict[str, tuple[Path, str]]:
    """Each hostile file, with the start of what its error line says after `SETTING=PATH: `."""
    marker = tmp_path / MARKER
    made = {
        "malicious": ({"state_dict": {}, "pytorch-lightning_version": "2.6", "x": RunsAShellCommand(marker)},
                      "it holds Python objects (posix.system) that a safe load (weights_only) refuses to run"),
        "foreign": ({"weights": torch.zeros(2)}, "not a mnistlab checkpoint (no 'pytorch-lightning_version' entry"),
        "newer": ({"state_dict": {}, "pytorch-lightning_version": "9.0",
                   MNISTLAB_KEY: {"version": "9.0.0", "format": CHECKPOINT_FORMAT + 1}},
                  f"written by mnistlab 9.0.0 in checkpoint format {CHECKPOINT_FORMAT + 1}"),
    }
    paths = {}
    for name, (content, why) in made.items():
        paths[name] = (tmp_path / f"{name}.ckpt", why)
        torch.save(content, paths[name][0])
    paths["garbage"] = (tmp_path / "garbage.ckpt", "truncated, corrupt or not a PyTorch checkpoint")
    paths["garbage"][0].write_bytes(b"\x80\x02not a checkpoint at all")
    return paths


@pytest.mark.parametrize("setting", ["ckpt_path", "tricks.init_from", "tricks.distill_teacher"])
def test_a_run_refuses_a_hostile_checkpoint_before_making_its_folder(files, setting, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, (path, why) in files.items():
        with pytest.raises(ConfigError) as error:
            precheck([f"{setting}={path}", f"hydra.run.dir={tmp_path / 'run'}"])
        assert str(error.value).startswith(f"{setting}={path}: {why}"), (name, str(error.value))
        assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "logs").exists()
    assert not (tmp_path / MARKER).exists()  # nothing of the malicious file ran


@pytest.mark.parametrize(("tool", "args"), [(evaluate_main, []), (predict_main, ["images=[a.png]"]),
                                            (export_main, ["out=exported"])])
def test_every_tool_refuses_a_hostile_checkpoint_in_one_line(files, tool, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, (path, why) in files.items():
        result = run_in_process(tool, f"ckpt_path={path}", *args)
        assert result.returncode == 2, (name, result.stderr)
        assert result.stderr.startswith(f"error: ckpt_path={path}: {why}"), (name, result.stderr)
        assert result.stderr.count("\n") == 1
    assert not (tmp_path / MARKER).exists() and not (tmp_path / "exported").exists()

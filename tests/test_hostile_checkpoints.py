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

from .conftest import network, run_in_process

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


class RunsWhenUnpickled:
    """What `torch.load(..., weights_only=False)` of a hostile file runs: here, it creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def hostile_model_configs(tmp_path: Path, marker: Path) -> dict[str, dict]:
    """Model configs naming callables that Hydra's instantiate would call; each would create `marker`."""
    pickled = tmp_path / "payload.pickle"
    torch.save(RunsWhenUnpickled(marker), pickled)
    return {
        "shutil.copyfile": {"_target_": "shutil.copyfile", "src": __file__, "dst": str(marker)},
        "builtins.open": {"_target_": "builtins.open", "file": str(marker), "mode": "w"},
        "os.makedirs": {"_target_": "os.makedirs", "name": str(marker)},
        "torch.load": {"_target_": "torch.load", "f": str(pickled), "weights_only": False},
        "nested in an FCN": {"_target_": "mnistlab.models.FCN",
                             "backbone": {"_target_": "os.makedirs", "name": str(marker)}},
        "an argument of a registered network": {"_target_": "mnistlab.models.SeedNet",
                                                "hidden": {"_target_": "os.makedirs", "name": str(marker)}},
        "_args_ of a registered network": {"_target_": "mnistlab.models.SeedNet",
                                           "_args_": [{"_target_": "os.makedirs", "name": str(marker)}]},
    }


def checkpoint_naming(model: dict) -> dict:
    """A checkpoint as mnistlab writes one (weights_only-safe), whose saved model config is `model`."""
    state = {f"net.{name}": tensor for name, tensor in network("SeedNet").state_dict().items()}
    return {"state_dict": state, "pytorch-lightning_version": "2.6.0", "epoch": 0, "global_step": 10,
            MNISTLAB_KEY: {"version": "0.1.0", "format": CHECKPOINT_FORMAT},
            "hyper_parameters": {"model": model, "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1}},
            "datamodule_hyper_parameters": {"name": "mnist", "root": "data"}}


@pytest.fixture
def hostile_networks(tmp_path) -> tuple[dict[str, Path], Path]:
    marker = tmp_path / "marker"
    paths = {}
    for name, model in hostile_model_configs(tmp_path, marker).items():
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.ckpt"
        torch.save(checkpoint_naming(model), paths[name])
    return paths, marker


def test_a_checkpoint_names_nothing_but_registered_networks_at_any_entry_point(hostile_networks, tmp_path,
                                                                               monkeypatch):
    from mnistlab.checkpoints import load_network, load_teacher
    from mnistlab.tasks.registry import load_datamodule, load_task
    from mnistlab.tricks import transfer_weights

    paths, marker = hostile_networks
    monkeypatch.chdir(tmp_path)
    loaders = {"load_task": lambda p: load_task(p, "ckpt_path"),
               "load_network": lambda p: load_network(p, "ckpt_path"),
               "load_datamodule": lambda p: load_datamodule(p, {}),
               "load_teacher": lambda p: load_teacher(str(p), 10),
               "transfer_weights": lambda p: transfer_weights(torch.nn.Linear(1, 1), p, False)}
    for name, path in paths.items():
        for loader_name, loader in loaders.items():
            with pytest.raises(ConfigError) as error:
                loader(path)
            assert "\n" not in str(error.value)
            assert "not a registered mnistlab network" in str(error.value) or "_args_" in str(error.value), (
                name, loader_name, str(error.value))
        for setting in ("ckpt_path", "tricks.init_from", "tricks.distill_teacher"):
            with pytest.raises(ConfigError) as error:
                precheck([f"{setting}={path}", f"hydra.run.dir={tmp_path / 'run'}"])
            assert str(error.value).startswith(f"{setting}={path}: its "), (name, setting, str(error.value))
        for tool, args in ((evaluate_main, []), (predict_main, ["images=[a.png]"]), (export_main, ["out=exported"])):
            result = run_in_process(tool, f"ckpt_path={path}", *args)
            assert result.returncode == 2 and result.stderr.count("\n") == 1, (name, tool, result.stderr)
            assert result.stderr.startswith(f"error: ckpt_path={path}: its "), (name, result.stderr)
    assert not marker.exists()  # nothing any checkpoint named was called
    assert not (tmp_path / "run").exists() and not (tmp_path / "exported").exists()


def test_the_error_names_the_foreign_target_and_how_to_register_a_network(hostile_networks):
    from mnistlab.checkpoints import load_network

    paths, _ = hostile_networks
    with pytest.raises(ConfigError, match=r"its network 'shutil.copyfile' is not a registered mnistlab network, "
                                          r"and nothing of it ran; .*'mnistlab.networks' entry point"):
        load_network(paths["shutil.copyfile"], "ckpt_path")


def test_a_registered_network_loads_from_a_checkpoint_and_an_unregistered_one_does_not(tmp_path):
    from mnistlab.checkpoints import load_network
    from mnistlab.models import register_network

    from .toy_net import ToyNet

    class Unlisted(ToyNet):
        pass

    net = Unlisted(width=4)
    saved = checkpoint_naming({"_target_": f"{__name__}.Unlisted", "width": 4})
    saved["state_dict"] = {f"net.{name}": tensor for name, tensor in net.state_dict().items()}
    torch.save(saved, tmp_path / "toy.ckpt")
    with pytest.raises(ConfigError, match="is not a registered mnistlab network"):
        load_network(tmp_path / "toy.ckpt", "ckpt_path")
    register_network(Unlisted, f"{__name__}.Unlisted")
    loaded = load_network(tmp_path / "toy.ckpt", "ckpt_path")
    assert type(loaded) is Unlisted and torch.equal(loaded.head[-1].weight, net.head[-1].weight)


def test_weights_that_do_not_fit_their_model_config_are_named_before_anything_loads(tmp_path):
    """Recognised by comparing the rebuilt network's names and shapes with the saved ones, not by the text of
    load_state_dict's error, for the network alone and for the whole task."""
    from mnistlab.checkpoints import load_network
    from mnistlab.tasks.registry import load_task

    path = tmp_path / "mismatched.ckpt"
    torch.save(checkpoint_naming({"_target_": "mnistlab.models.SeedNet", "hidden": 400}), path)  # fc1 saved: 500
    for load in (load_network, load_task):
        with pytest.raises(ConfigError) as error:
            load(path, "ckpt_path")
        assert str(error.value).startswith(f"ckpt_path={path}: its weights do not fit the model config saved with "
                                           "them (head.fc1.weight: [500, 800] saved, [400, 800] built; ")

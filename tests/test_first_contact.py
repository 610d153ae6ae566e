"""What a new user meets: mistakes at the command line as one line with a suggestion, no litter after a failed
run, a download error that names its cause."""

import subprocess
import sys
from pathlib import Path

import pytest

from mnistlab import config, data
from mnistlab.errors import ConfigError
from mnistlab.train import precheck

from .conftest import REPO, offline_env


def test_a_home_folder_and_lightning_file_names_are_spelled_for_hydra():
    home = str(Path.home())
    assert config.shell_spelling(["data.root=~/datasets/mnist", "ckpt_path=logs/epoch=3-step=9.ckpt", "seed=1"]) == [
        f"data.root={home}/datasets/mnist", "ckpt_path='logs/epoch=3-step=9.ckpt'", "seed=1"]
    cfg = config.compose_run_config(config.shell_spelling(["data.root=~/datasets/mnist"]))
    assert cfg.data.root == f"{home}/datasets/mnist"


def test_a_plugin_choice_without_its_plugin_names_the_install_command(monkeypatch):
    monkeypatch.setitem(config.PLUGINS, ("hydra/launcher", "joblib"), "no-such-hydra-plugin")
    assert config.unknown_choice(["hydra/launcher=joblib"]) == (
        "hydra/launcher=joblib needs no-such-hydra-plugin, which is not installed: "
        "pip install -e '.[sweep]' (mnistlab's sweep extra) installs it")
    assert config.unknown_choice(["hydra/launcher=submitit_local"]) is None  # installed with the sweep extra


def test_an_unknown_launcher_lists_the_installed_ones():
    assert config.unknown_choice(["hydra/launcher=joblibx"]) == (
        "unknown hydra/launcher 'joblibx' (override hydra/launcher=joblibx); "
        "choose one of: basic, joblib, submitit_local, submitit_slurm")


@pytest.mark.parametrize(("arg", "why"), [("model.widths=[1,2", "no viable alternative at input '[1,2'"),
                                          ("data.root=a'b", "LexerNoViableAltException")])
def test_a_grammar_error_is_one_line_that_says_how_to_quote(arg, why):
    with pytest.raises(ConfigError) as error:
        precheck([arg])
    message = str(error.value)
    assert message.startswith(f"could not parse {arg!r}: ") and why in message and "\n" not in message
    assert "(key='a b')" in message


def test_a_failed_download_says_why_and_leaves_no_folders(tmp_path, monkeypatch):
    class MNIST:  # torchvision's MNIST offline: it makes its folders, then fails on every mirror
        def __init__(self, root, train, download):
            (Path(root) / "MNIST" / "raw").mkdir(parents=True)
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\n"
                               "<urlopen error [Errno -2] Name or service not known>\n")

    monkeypatch.setitem(data.TORCHVISION_DATASETS, "mnist", MNIST)
    why = data.download(tmp_path / "datasets" / "mnist", "mnist")
    assert why == ("Error downloading train-images-idx3-ubyte.gz: <urlopen error [Errno -2] Name or service not "
                   "known>")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_run_that_fails_before_training_leaves_nothing_behind(tmp_path):
    # From an empty working folder, offline, as a user runs it: the data is missing and cannot be downloaded.
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "data.root=datasets/mnist"], cwd=tmp_path,
                            env=offline_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no mnist data in datasets/mnist" in errors[0] and "the download failed (" in errors[0]
    assert list(tmp_path.iterdir()) == []  # no logs/default/runs/<time>, no datasets/mnist/MNIST/raw


def test_an_experiment_without_its_plus_says_to_add_it():
    with pytest.raises(ConfigError, match=r"^experiment=mixup needs a \+: \+experiment=mixup \(experiment is not in "
                                          r"the defaults list, so it is added\)$"):
        precheck(["experiment=mixup"])

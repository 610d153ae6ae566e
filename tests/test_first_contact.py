"""What a new user meets: mistakes at the command line as one line with a suggestion, no litter after a failed
run, a download error that names its cause."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mnistlab import config, override_errors
from mnistlab.data import files
from mnistlab.errors import ConfigError, DataError
from mnistlab.train import precheck

from .conftest import REPO, configured, offline_env


def test_a_home_folder_and_lightning_file_names_are_spelled_for_hydra():
    home = str(Path.home())
    assert config.shell_spelling(["data.root=~/datasets/mnist", "ckpt_path=logs/epoch=3-step=9.ckpt", "seed=1"]) == [
        f"data.root={home}/datasets/mnist", "ckpt_path='logs/epoch=3-step=9.ckpt'", "seed=1"]
    cfg = config.compose_run_config(config.shell_spelling(["data.root=~/datasets/mnist"]))
    assert cfg.data.root == f"{home}/datasets/mnist"


def test_a_plugin_choice_without_its_plugin_names_the_install_command(monkeypatch):
    monkeypatch.setitem(override_errors.PLUGINS, ("hydra/launcher", "joblib"), "no-such-hydra-plugin")
    assert override_errors.unknown_choice(["hydra/launcher=joblib"]) == (
        "hydra/launcher=joblib needs no-such-hydra-plugin, which is not installed: "
        "pip install -e '.[sweep]' (mnistlab's sweep extra) installs it")
    assert override_errors.unknown_choice(["hydra/launcher=submitit_local"]) is None  # installed with the sweep extra


def test_an_unknown_launcher_lists_the_installed_ones():
    assert override_errors.unknown_choice(["hydra/launcher=joblibx"]) == (
        "unknown hydra/launcher 'joblibx' (override hydra/launcher=joblibx); "
        "choose one of: basic, joblib, mnistlab, submitit_local, submitit_slurm")


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

    monkeypatch.setitem(files.TORCHVISION_DATASETS, "mnist", MNIST)
    why = files.download(tmp_path / "datasets" / "mnist", "mnist")
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


@pytest.mark.slow
def test_the_sweeper_plugin_is_silent_where_optuna_is_not_installed():
    """A plain install has no Optuna: Hydra's plugin scan imports mnistlab's sweeper module on every run, and it
    must not need Optuna to import (its search imports it when a search starts)."""
    without_optuna = ("import sys; sys.modules['optuna'] = None; sys.modules['sqlalchemy'] = None; "
                      "sys.argv = ['train.py', '--cfg', 'job']; from mnistlab.train import main; main()")
    result = subprocess.run([sys.executable, "-c", without_optuna], cwd=REPO, env=offline_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == "" and "optuna" not in result.stdout.lower()
    assert result.stdout.startswith("data:") or "seed: 42" in result.stdout


@pytest.mark.slow
def test_the_first_command_trains_offline_on_the_bundled_digits_and_says_so(tmp_path):
    """`python train.py` on a fresh machine with no network: no MNIST in data/, the download fails, and the run
    trains on the official MNIST test digits bundled with mnistlab, re-split, saying so and naming them."""
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "trainer.max_epochs=1"], cwd=tmp_path,
                            env=offline_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line for line in (result.stdout + result.stderr).splitlines() if "bundled with mnistlab" in line]
    assert len(said) == 1 and said[0].startswith("warning: no MNIST in data and the download failed (")
    assert "8,000 training digits (the last 1,000 of them validate) and 2,000 test digits" in said[0]
    (run_dir,) = (tmp_path / "logs" / "default" / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"] == "mnist from data/MNIST-bundled" and metrics["test/acc"] > 0.8  # real digits, 1 epoch
    assert "data          mnist from data/MNIST-bundled" in result.stdout


def test_online_the_default_run_downloads_mnist_and_never_falls_back(tmp_path, monkeypatch):
    """With a working download (a fake that writes the files torchvision would) the full data is used as before."""
    from mnistlab.data.synthetic import write_synthetic_dataset

    class MNIST:
        def __init__(self, root, train, download):
            write_synthetic_dataset(Path(root) / "MNIST" / "raw", n_train=300, n_test=50)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(files.TORCHVISION_DATASETS, "mnist", MNIST)
    module = configured("data", val_size=100)
    module.prepare_data()
    module.setup()
    assert module.root == Path("data") and len(module.splits["train"][1]) == 200
    assert not (tmp_path / "data" / files.BUNDLED_FOLDER).exists()


def test_a_data_root_the_user_gave_never_falls_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = configured("data", root=str(tmp_path / "mine"), download=False)
    module.prepare_data()
    with pytest.raises(DataError, match="no mnist data in"):
        module.setup()
    assert not any(tmp_path.iterdir())


def test_files_of_another_dataset_are_named_in_one_warning(tmp_path, caplog):
    """The bundled MNIST digits under data=fashion_mnist: training would go on, on Fashion's statistics."""
    digits = files.write_bundled_mnist(tmp_path / "digits")
    fashion = configured("data", "data=fashion_mnist", root=str(digits), val_size=100)
    with caplog.at_level("WARNING", logger="mnistlab.data.digits"):
        fashion.setup()
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "mnistlab.data.digits"]
    assert warning.startswith(f"{digits / 'train-images-idx3-ubyte.gz'} looks like mnist, not fashion_mnist")
    assert "add data=mnist" in warning
    caplog.clear()
    configured("data", root=str(digits), val_size=100).setup()
    assert not [r for r in caplog.records if r.name == "mnistlab.data.digits"]

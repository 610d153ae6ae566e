"""Folders that cannot hurt the user: a failed run removes only what it made (never a folder that was there before,
never a mount point), one writer per run or sweep folder from the first byte, a resumed run's metrics as an
uninterrupted run's, and the folder and resume mistakes that end in one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from mnistlab.errors import ConfigError
from mnistlab.train import precheck

from .conftest import FAST, REPO, network, offline_env, run_train, train_in_process, train_main


def contents(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` (hidden ones too) with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def user_folder(root: Path) -> Path:
    """A folder of the user's that looks like a run folder's start: a tensorboard/ folder holding their notes."""
    (root / "tensorboard").mkdir(parents=True)
    (root / "tensorboard" / "notes.txt").write_text("my notes\n")
    (root / "train.log").write_text("my log\n")
    return root


@pytest.mark.slow
def test_a_failed_run_in_an_existing_folder_leaves_it_as_it_was(tmp_path):
    """The real process (stays one): its whole stderr is the one line, and train.log, which Hydra's log handler
    holds open in the user's folder until the process ends, is left as the user had it."""
    folder, empty = user_folder(tmp_path / "mine"), tmp_path / "no_data"
    empty.mkdir()
    before = contents(folder)
    result = run_train(f"hydra.run.dir={folder}", f"data.root={empty}", "data.download=false")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert result.stderr.startswith("error: no mnist data in")
    assert contents(folder) == before  # Hydra's .hydra/, the lock: gone; the user's files: untouched


@pytest.fixture
def mount(tmp_path):
    """A tmpfs mounted on a fresh folder, read-only with `mount("ro")`; skipped where mounting is not allowed."""
    mounted = []

    def make(name: str, *options: str) -> Path:
        point = tmp_path / name
        point.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(["size=16m", *options]), "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield make
    for point in reversed(mounted):
        subprocess.run(["umount", str(point)], check=False)


@pytest.mark.slow
def test_a_failed_run_on_a_mount_point_keeps_the_mount_and_what_it_held(mount, tmp_path, monkeypatch):
    point = mount("disk")
    (point / "kept.txt").write_text("mine\n")
    empty = tmp_path / "no_data"
    empty.mkdir()
    result = train_main(monkeypatch, f"hydra.run.dir={point}", f"data.root={empty}", "data.download=false")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert subprocess.run(["mountpoint", "-q", str(point)]).returncode == 0
    assert contents(point) == {"kept.txt": b"mine\n"}


@pytest.mark.slow
@pytest.mark.parametrize("read_only", ["run folder", "checkpoints", "tensorboard"])
def test_a_read_only_place_is_one_line_and_the_run_folder_keeps_what_was_there(read_only, mount, synthetic_root,
                                                                                tmp_path, monkeypatch):
    if read_only == "run folder":
        run_dir = mount("ro_parent", "ro") / "run"
    else:
        run_dir = tmp_path / "run"
        mount(f"run/{read_only}", "ro")
    result = train_main(monkeypatch, f"hydra.run.dir={run_dir}", f"data.root={synthetic_root}", *FAST,
                        "trainer.max_epochs=1")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "Read-only file system" in errors[0] and "Traceback" not in result.stderr, errors
    if read_only != "run folder":
        assert (run_dir / read_only).is_dir()  # the mount point is still there


@pytest.mark.slow
def test_two_runs_started_together_into_one_folder_one_proceeds_and_the_folder_records_it(synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    runs = [subprocess.Popen([sys.executable, "train.py", f"hydra.run.dir={run_dir}", f"data.root={synthetic_root}",
                              *FAST, "trainer.limit_train_batches=4", "callbacks=minimal", f"seed={seed}"],
                             cwd=REPO, env=offline_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for seed in (1, 2)]
    results = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err[-1500:] for _, _, err in results]
    winner = next(seed for seed, (code, _, _) in zip((1, 2), results, strict=True) if code == 0)
    _, _, loser_err = next(result for result in results if result[0] == 2)
    assert loser_err.count("\n") == 1 and (" is in use by process " in loser_err or "holds a finished run" in loser_err)
    recorded = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert recorded["seed"] == winner and f"seed={winner}" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_two_sweeps_started_together_into_one_folder_one_proceeds_and_each_job_records_its_own(synthetic_root,
                                                                                               tmp_path):
    sweep = tmp_path / "sweep"
    common = [f"data.root={synthetic_root}", *FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=4",
              "callbacks=minimal", f"hydra.sweep.dir={sweep}"]
    sweeps = [subprocess.Popen([sys.executable, "train.py", "-m", seeds, *common], cwd=REPO, env=offline_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for seeds in ("seed=1,2", "seed=3,4")]
    results = [(run.wait(timeout=600), *run.communicate()) for run in sweeps]
    assert sorted(code for code, _, _ in results) == [0, 2], [err[-1500:] for _, _, err in results]
    _, _, loser_err = next(result for result in results if result[0] == 2)
    assert "is in use by another sweep" in loser_err or "holds the jobs of another sweep" in loser_err, loser_err
    jobs = sorted(sweep.glob("*/.hydra"))
    assert len(jobs) == 2
    for job in jobs:
        seed = yaml.safe_load((job / "config.yaml").read_text())["seed"]
        assert f"seed={seed}" in (job / "overrides.yaml").read_text()
        assert (job.parent / "metrics.json").is_file() and not (job.parent / "failure.json").exists()


class InterruptTheTest(pl.Callback):
    """Ctrl-C as the test phase starts, after the fit saved its last checkpoint."""

    def on_test_start(self, trainer, pl_module):
        raise KeyboardInterrupt


@pytest.mark.slow
def test_a_run_resumed_after_ctrl_c_in_its_test_phase_keeps_its_best_and_its_epoch_time(synthetic_root, tmp_path):
    args = [f"data.root={synthetic_root}", *FAST, "callbacks=minimal"]
    whole = train_in_process(tmp_path / "whole", *args)
    with pytest.raises(SystemExit):  # Lightning ends a Ctrl-C with exit status 1
        train_in_process(tmp_path / "cut", *args, "+callbacks.cut._target_=tests.test_run_folders.InterruptTheTest")
    resumed = train_in_process(tmp_path / "cut", *args, "ckpt_path=last")
    assert resumed["val/acc_best"] == whole["val/acc_best"] is not None
    assert resumed["test/acc"] == whole["test/acc"]
    assert resumed["seconds_per_epoch"] > 0 and resumed["epochs"] == 2


def saved_checkpoint(tmp_path: Path, model, **entries) -> Path:
    state = {f"net.{name}": tensor for name, tensor in model.state_dict().items()}
    network = {"_target_": f"mnistlab.models.{type(model).__name__}"}
    saved = {"state_dict": state, "pytorch-lightning_version": "2.6.0", "epoch": 0, "global_step": 10, "loops": {},
             "optimizer_states": [], "hyper_parameters": {"model": network}, **entries}
    path = tmp_path / f"{type(model).__name__}.ckpt"
    torch.save({key: value for key, value in saved.items() if value is not None}, path)
    return path


def test_a_checkpoint_that_cannot_resume_this_run_is_one_line(tmp_path, monkeypatch):

    monkeypatch.chdir(tmp_path)
    weights_only = saved_checkpoint(tmp_path, network("SeedNet"), epoch=None, loops=None)
    with pytest.raises(ConfigError, match=r"it holds weights but no training state to resume \(no 'epoch' entry\); "
                                          r"start from its weights with tricks.init_from="):
        precheck([f"ckpt_path={weights_only}"])
    resnet = saved_checkpoint(tmp_path, network("ResNet"))
    with pytest.raises(ConfigError, match=r"its weights \(mnistlab.models.ResNet\) do not fit this run's SeedNet"):
        precheck([f"ckpt_path={resnet}", "model=seednet"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ResNet.ckpt", "SeedNet.ckpt"]  # no run folder


@pytest.mark.parametrize(("args", "says"), [
    (["optimizer.lr=${oc.env:MNISTLAB_SURELY_UNSET}"], "MNISTLAB_SURELY_UNSET"),
    ([f"name={'x' * 300}"], "name="),
])
def test_a_config_that_cannot_be_resolved_or_named_is_one_line(args, says, tmp_path, monkeypatch, capsys):
    from mnistlab import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    monkeypatch.setattr(train, "hydra_main", lambda: pytest.fail("the run would start"))
    with pytest.raises(SystemExit) as exit_:
        train.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and says in err, err
    assert not any(tmp_path.iterdir())


class InterruptTheSecondEpoch(pl.Callback):
    """Ctrl-C as epoch 1 starts: epoch 0's checkpoints are saved, the run is unfinished."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_a_run_folder_moved_with_its_checkpoints_resumes_and_tests_its_best(synthetic_root, tmp_path):
    args = [f"data.root={synthetic_root}", *FAST, "callbacks=minimal"]
    with pytest.raises(SystemExit):
        train_in_process(tmp_path / "there", *args,
                         "+callbacks.cut._target_=tests.test_run_folders.InterruptTheSecondEpoch")
    moved = tmp_path / "here"
    (tmp_path / "there").rename(moved)
    resumed = train_in_process(moved, *args, "ckpt_path=last")
    assert resumed["epochs"] == 2 and Path(resumed["best_checkpoint"]).is_file()
    assert Path(resumed["best_checkpoint"]).parent == moved / "checkpoints"
    assert resumed["val/acc_best"] is not None

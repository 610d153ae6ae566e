"""Reliability: bad configs stop before anything is written, kill -9 then `ckpt_path=last` ends exactly where an
uninterrupted run ends, Ctrl-C saves a checkpoint, a diverged loss stops the run, runs are deterministic, and DDP
trains on 2 CPU processes with synced metrics: through the real `python train.py` where a signal, a kill, a lock or
the process's exit status is the point, train.py's main() in process where one line of error is, or a run whose
result is compared with a reference run's."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnistlab.callbacks.checkpointing import AtomicCheckpointIO
from mnistlab.data.synthetic import write_synthetic_dataset
from mnistlab.errors import ConfigError
from mnistlab.tasks.registry import load_task
from mnistlab.tools.evaluate import evaluate
from mnistlab.train import precheck

from .conftest import FAST, REPO, offline_env, run_train, train_main

# Deterministic, with the random parts on (augmentation, mixup), so that resuming must restore their streams.
RANDOM_PARTS = ["trainer.deterministic=true", "data.augment={degrees:10,translate:0.1}", "tricks.mixup_alpha=0.2",
                "callbacks=minimal", "trainer.precision=32-true"]
FINAL = ("test/acc", "test/loss", "val/acc_best")


@pytest.mark.parametrize(("overrides", "message"), [
    (["optimizer.lr=0"], "optimizer.lr=0 must be > 0"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be > 0"),
    (["optimizer.momentum=1.5"], "optimizer.momentum=1.5 must be in [0, 1)"),
    (["data.batch_size=0"], "data.batch_size=0 must be an integer >= 1"),
    (["data.batch_size=abc"], "data.batch_size='abc' must be an integer >= 1"),
    (["data.val_size=-5"], "data.val_size=-5 must be an integer >= 0 (0: no validation"),
    (["data.name=emnist"], "data.name='emnist' must be one of fashion_mnist, kmnist, mnist"),
    (["tricks.label_smoothing=1.0"], "tricks.label_smoothing=1.0 must be in [0, 1)"),
    (["tricks.mixup_alpha=-0.2"], "tricks.mixup_alpha=-0.2 must be >= 0 (0 turns mixup off)"),
    (["scheduler.warmup_epochs=10", "trainer.max_epochs=10"],
     "scheduler.warmup_epochs=10 must be below trainer.max_epochs=10"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 must be an integer >= 1"),
    (["trainer.precision=fp16"], "trainer.precision='fp16' must be one of 32-true"),
    (["trainer.precision=bf16-true"], "trainer.precision='bf16-true' must be one of 32-true, 32, bf16-mixed, "
                                      "16-mixed (bf16-true, 16-true and 64-true runs are not supported)"),
    (["model.downsample=avg"], "model.downsample='avg' must be one of pool, stride"),
    (["model.dropout=1"], "model.dropout=1 must be in [0, 1)"),
    (["tricks.distill_teacher=nope.ckpt"], "tricks.distill_teacher=nope.ckpt: no such checkpoint file"),
    ([f"tricks.distill_teacher=[{REPO / 'train.py'},nope.ckpt]"],  # each of an ensemble's files is checked
     "tricks.distill_teacher=nope.ckpt: no such checkpoint file"),
    (["tricks.init_from=nope.ckpt"], "tricks.init_from=nope.ckpt: no such checkpoint file"),
    (["model.kernel_size=2.5"], "model.kernel_size=2.5 must be an integer >= 1"),
    (["model.kernel_siz=3"],
     "unknown key 'model.kernel_siz' in 'model.kernel_siz=3': did you mean model.kernel_size? model has "),
    (["+tricks.mixup=0.2"], "unknown key tricks.mixup: mnistlab.tasks.classification.Classifier takes "),
    (["+optimizer.betas=[0.9,0.99]"], "unknown key optimizer.betas: torch.optim.SGD takes "),
    (["compile=1"], "compile=1 must be true, false or one of default, reduce-overhead"),
    (["callbacks.validation_analysis.figures_every_n_epochs=-1"],
     "callbacks.validation_analysis.figures_every_n_epochs=-1 must be an integer >= 0 (0 = never)"),
])
@pytest.mark.slow
def test_bad_configs_are_rejected_before_anything_is_built(overrides, message):
    with pytest.raises(ConfigError) as caught:
        precheck(overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_config_writes_no_run_folder(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    result = train_main(monkeypatch, "optimizer.lr=0", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2 and result.stderr.strip() == "error: optimizer.lr=0 must be > 0"
    assert not run_dir.exists()


def test_checkpoints_are_replaced_atomically(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, target)

    class KilledMidWrite(Exception):
        pass

    def killed(descriptor):  # the process dies after writing the temporary file, before the rename
        raise KilledMidWrite

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", killed)
        with pytest.raises(KilledMidWrite):
            io.save_checkpoint({"epoch": 2}, target)
    assert torch.load(target, weights_only=True) == {"epoch": 1}  # the previous checkpoint survived
    io.save_checkpoint({"epoch": 3}, target)
    assert torch.load(target, weights_only=True) == {"epoch": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left once a save succeeds


@pytest.fixture(scope="module")
def larger_root(tmp_path_factory) -> Path:
    """Enough images that an epoch takes a moment (47 steps of 32 after the 500 validation images), so that a kill
    lands mid-run; few enough that the five epochs of a whole run stay short."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("larger"), n_train=2000, n_test=300)


def overrides(root: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", "data.val_size=500", "data.batch_size=32", "trainer.max_epochs=5",
            "trainer.log_every_n_steps=20", *RANDOM_PARTS, *extra]


def command(root: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *overrides(root, *extra)]


def train_here(monkeypatch, root: Path, *extra: str) -> subprocess.CompletedProcess:
    """The same run as `command`, train.py's main() in this process; the deterministic-algorithms switch that
    trainer.deterministic=true turns on is put back, so later tests run as they would have."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        return train_main(monkeypatch, *overrides(root, *extra))
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def final(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {key: metrics[key] for key in FINAL}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, larger_root) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = subprocess.run(command(larger_root, f"hydra.run.dir={run_dir}"), env=offline_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_deterministic_runs_give_identical_metrics(reference_run, larger_root, tmp_path, monkeypatch):
    again = tmp_path / "again"
    result = train_here(monkeypatch, larger_root, f"hydra.run.dir={again}")  # the reference ran as a process
    assert result.returncode == 0, result.stderr[-3000:]
    assert final(again) == final(reference_run)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_then_ckpt_path_last_ends_exactly_like_an_uninterrupted_run(reference_run, larger_root, tmp_path,
                                                                             monkeypatch):
    # From a working folder of its own, as a user runs it: the run folder is logs/default/runs/<time>.
    process = subprocess.Popen(command(larger_root), cwd=tmp_path, env=offline_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "logs" / "default" / "runs"
    wait_for(runs, process)
    last = next(runs.iterdir()) / "checkpoints" / "last.ckpt"
    wait_for(last, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = last.parents[1]
    assert not (run_dir / "metrics.json").exists(), "the run finished before it could be killed"
    killed_at = torch.load(last, weights_only=True)["epoch"]

    monkeypatch.chdir(tmp_path)
    result = train_here(monkeypatch, larger_root, "ckpt_path=last")  # the resume, from the same working folder
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {run_dir.relative_to(tmp_path)}" in result.stdout
    assert [p.name for p in runs.iterdir()] == [run_dir.name]  # continued in its own folder
    assert killed_at < 4 and final(run_dir) == final(reference_run)


def test_ckpt_path_last_without_an_unfinished_run_is_one_line(tmp_path, synthetic_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = train_main(monkeypatch, f"data.root={synthetic_root}", "ckpt_path=last")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ckpt_path=last: no unfinished run to resume under logs/default")


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_saves_a_checkpoint(larger_root, tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(command(larger_root, f"hydra.run.dir={run_dir}"), env=offline_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(run_dir / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1 and "Traceback" not in stderr
    interrupted = run_dir / "checkpoints" / "interrupted.ckpt"
    assert f"saved {interrupted}; resume from {run_dir / 'checkpoints' / 'last.ckpt'}" in stdout
    assert load_task(interrupted, "ckpt_path").hparams.model["num_classes"] == 10
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.parametrize("val_size", [200, 0])  # 0: checkpoints follow the training epoch, not a validation
@pytest.mark.slow
def test_a_diverging_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path, val_size,
                                                                               monkeypatch):
    run_dir = tmp_path / "run"
    # A step schedule that multiplies the lr by 1e8 after the first epoch: the second epoch diverges. Logging
    # every 50 steps leaves the catch to the epoch's end (before validation, or before the checkpoint without it).
    result = train_main(monkeypatch, f"data.root={synthetic_root}", f"hydra.run.dir={run_dir}", *FAST,
                        "trainer.max_epochs=3", "scheduler=step", "scheduler.step_epochs=1", "scheduler.gamma=1e8",
                        "callbacks=minimal", "trainer.precision=32-true", f"data.val_size={val_size}",
                        "trainer.log_every_n_steps=50")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert line.startswith("error: the training loss became nan or inf at step ") and "(epoch 1)" in line
    assert f"the last good checkpoint is {last}" in line
    step = int(line.split(" at step ")[1].split()[0])
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] == 0 and saved["global_step"] <= step  # from before the divergence
    # The network's weights (the never-updated val_best of a run without validation is -inf by design).
    weights = [t for name, t in saved["state_dict"].items() if name.startswith("net.")]
    assert weights and all(torch.isfinite(t).all() for t in weights)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_and_tests_with_synced_metrics(synthetic_root, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(f"data.root={synthetic_root}", f"hydra.run.dir={run_dir}", *FAST, "trainer=ddp",
                       "trainer.accelerator=cpu", "callbacks=minimal", "trainer.precision=32-true", "verbose=true",
                       timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout  # verbose
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # one run folder for both ranks
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Each rank tested half the test set; the synced figures equal one process testing all of it.
    single = evaluate(metrics["best_checkpoint"], {}, accelerator="cpu", precision="32-true")
    assert single["images"] == 300
    assert metrics["test/acc"] == pytest.approx(single["test/acc"], abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(single["test/loss"], abs=1e-5)
    assert os.path.getsize(run_dir / "checkpoints" / "last.ckpt") > 0


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_says_how_to_resume_and_exits_143(larger_root, tmp_path):
    """What `docker stop`, Kubernetes and a scheduler's preemption send: handled like Ctrl-C, and not a success."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen(command(larger_root, f"hydra.run.dir={run_dir}"), env=offline_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(run_dir / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    interrupted, last = run_dir / "checkpoints" / "interrupted.ckpt", run_dir / "checkpoints" / "last.ckpt"
    assert f"saved {interrupted}; resume from {last} with ckpt_path=last" in stdout
    steps = [torch.load(path, weights_only=True)["global_step"] for path in (interrupted, last)]
    assert steps[0] >= steps[1]  # the weights reached, and the last whole epoch
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_a_second_process_cannot_write_a_live_run_folder(larger_root, tmp_path):
    run_dir = tmp_path / "run"
    # Long enough to be alive however slowly the second process starts; stopped once the point is made.
    first = subprocess.Popen(command(larger_root, f"hydra.run.dir={run_dir}", "trainer.max_epochs=100"),
                             env=offline_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(run_dir / "checkpoints" / "last.ckpt", first)
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    second = subprocess.run(command(larger_root, f"hydra.run.dir={run_dir}", "ckpt_path=last"), env=offline_env(),
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    assert second.stderr.strip() == (f"error: {run_dir} is in use by process {first.pid}: one run writes a run "
                                     "folder at a time; wait for it to end, or give another hydra.run.dir")
    assert (run_dir / ".hydra" / "config.yaml").read_text() == config  # nothing of the live run was touched
    assert first.poll() is None
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=600)
    assert first.returncode == 143 and (run_dir / "checkpoints" / "interrupted.ckpt").is_file()


@pytest.fixture
def small_disk(tmp_path):
    """A real 6 MiB file system (tmpfs): room for one checkpoint of the seed network, not two. Needs the right
    to mount; skipped, saying why, where it is not given."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_ends_the_run_in_one_line_and_keeps_what_was_saved(synthetic_root, small_disk, monkeypatch):
    run_dir = small_disk / "run"
    result = train_main(monkeypatch, f"data.root={synthetic_root}", f"hydra.run.dir={run_dir}", *FAST,
                        "callbacks=minimal")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors[0].startswith(f"error: no space left in {run_dir / 'checkpoints'} for ")
    assert re.search(r"a checkpoint needs 3\.\d MiB, \d\.\d MiB is free; the earlier checkpoints are intact", errors[0])
    assert not list(run_dir.rglob("*.partial"))
    (saved,) = run_dir.rglob("*.ckpt")  # the one written before the disk filled, whole
    assert torch.load(saved, map_location="cpu", weights_only=True)["epoch"] == 0
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert "train/loss_step" in events.Tags()["scalars"]


def test_a_run_never_overwrites_a_finished_one(tmp_path):
    finished = tmp_path / "run"
    finished.mkdir()
    (finished / "metrics.json").write_text('{"test/acc": 0.9}\n')
    with pytest.raises(ConfigError, match=rf"^{finished} holds a finished run \(metrics.json\): a run never "
                                          "overwrites another; give another hydra.run.dir, or remove that folder$"):
        precheck([f"hydra.run.dir={finished}"])
    assert (finished / "metrics.json").read_text() == '{"test/acc": 0.9}\n'


def test_a_sweep_never_overwrites_another_one(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    for job, finished in [("0", True), ("1", False)]:  # one finished job, one that failed or was cut short
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n- ++trainer.max_epochs=3\n")
        if finished:
            (sweep / job / "metrics.json").write_text('{"test/acc": 0.9}\n')
    before = sorted(p.relative_to(sweep) for p in sweep.rglob("*"))
    result = train_main(monkeypatch, "-m", "seed=1,2", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2
    assert result.stderr == (f"error: {sweep} holds the jobs of another sweep (0/ is a job of seed=0 "
                             "trainer.max_epochs=3, which this command does not run): a sweep never overwrites "
                             "another; rerun that sweep's own command to continue it, give another hydra.sweep.dir, "
                             f"or remove {sweep}\n")
    assert sorted(p.relative_to(sweep) for p in sweep.rglob("*")) == before
    assert (sweep / "0" / "metrics.json").read_text() == '{"test/acc": 0.9}\n'


@pytest.mark.slow
def test_slurm_preemption_requeues_the_job_and_the_requeued_job_resumes_in_its_folder(larger_root, tmp_path):
    """SLURM's warning signal before the time limit (#SBATCH --signal=SIGUSR1@90): Lightning saves its HPC
    checkpoint and asks SLURM to requeue the job; the time limit's SIGTERM ends it (143); the requeued job, the
    same command under the same job id, resumes in the same folder and finishes."""
    calls, bin_dir, work = tmp_path / "scontrol.calls", tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    work.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**offline_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NODEID": "0"}
    run_dir = work / "logs" / "default" / "runs" / "slurm-4242"
    first = subprocess.Popen(command(larger_root), cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    wait_for(run_dir / "checkpoints" / "last.ckpt", first)
    first.send_signal(signal.SIGUSR1)
    wait_for(calls, first)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert first.returncode == 143
    assert calls.read_text().split() == ["requeue", "4242"]
    (hpc,) = run_dir.glob("hpc_ckpt_*.ckpt")
    assert not (run_dir / "metrics.json").exists()

    second = subprocess.run(command(larger_root), cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 5
    assert f"Restoring states from the checkpoint path at {hpc}" in (run_dir / "train.log").read_text()
    assert [p.name for p in (work / "logs" / "default" / "runs").iterdir()] == ["slurm-4242"]

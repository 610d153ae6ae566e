"""Work that survives a crash: checkpoints written atomically, a checkpoint on Ctrl-C or SIGTERM, one writer per
run folder, and finding the run that `ckpt_path=last` resumes."""

import contextlib
import fcntl
import os
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mnistlab.errors import ConfigError

LAST = "last.ckpt"
INTERRUPTED = "interrupted.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file beside their target, flushed to disk, then renamed over it:
    a kill during the write leaves the previous file intact (a rename within a folder is atomic)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, path)


class SaveOnInterrupt(pl.Callback):
    """Ctrl-C (SIGINT) and SIGTERM (`docker stop`, Kubernetes, a scheduler's preemption) stop training cleanly:
    Lightning calls `on_exception`, which saves the weights reached so far as checkpoints/interrupted.ckpt.
    last.ckpt, the end of the last full epoch, stays what `ckpt_path=last` resumes from."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        stopped = isinstance(exception, KeyboardInterrupt | SIGTERMException)
        if not stopped or trainer.checkpoint_callback is None:
            return
        folder = Path(trainer.checkpoint_callback.dirpath)
        trainer.save_checkpoint(folder / INTERRUPTED)
        if trainer.is_global_zero:
            last = folder / LAST
            resume = f"resume from {last} with ckpt_path=last" if last.is_file() else "no full epoch to resume from"
            print(f"\ninterrupted at epoch {trainer.current_epoch}, step {trainer.global_step}: saved "
                  f"{folder / INTERRUPTED}; {resume}", flush=True)


LOCK = ".lock"


@contextlib.contextmanager
def run_folder_lock(folder: Path):
    """Holds an exclusive lock on a run folder while the block runs: a second process that would write there (a
    resume, the same hydra.run.dir) stops at once with one line naming the holder. The operating system drops the
    lock when its process dies, so a lock left by a killed run never blocks."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"{folder} is in use by process {holder}: one run writes a run folder at a time; "
                              "wait for it to end, or give another hydra.run.dir") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


def check_not_in_use(folder: Path) -> None:
    """The one-line error of run_folder_lock, before anything (Hydra's own files included) is written there."""
    if (folder / LOCK).is_file():
        with run_folder_lock(folder):
            pass


def unfinished_run(runs: Path) -> Path:
    """The newest run folder under `runs` with a last.ckpt and no metrics.json (it never finished)."""
    candidates = sorted((p.parents[1] for p in runs.glob(f"*/checkpoints/{LAST}")
                         if not (p.parents[1] / "metrics.json").exists()), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError(f"ckpt_path=last: no unfinished run to resume under {runs} (one with "
                          f"checkpoints/{LAST} and no metrics.json); give ckpt_path=FILE or hydra.run.dir=FOLDER")
    return candidates[-1]


def resume_checkpoint(ckpt_path: str | None, run_dir: Path) -> str | None:
    """The file `trainer.fit` resumes from: None, a given checkpoint, or `last` = this run folder's last.ckpt."""
    if ckpt_path is None:
        return None
    path = run_dir / "checkpoints" / LAST if ckpt_path == "last" else Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no checkpoint at {path}")
    return str(path)

"""Checkpoints that survive a crash: written atomically, last.ckpt at the end of every epoch, a checkpoint on
Ctrl-C or SIGTERM."""

import errno
import io
import os
import shutil
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mnistlab.checkpoints import mib
from mnistlab.errors import DiskFullError

LAST = "last.ckpt"
INTERRUPTED = "interrupted.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file beside their target, flushed to disk, then renamed over it:
    a kill during the write leaves the previous file intact (a rename within a folder is atomic). A full disk
    removes the partial file and ends the run in one line that says how much space a checkpoint needs."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(partial, "wb") as written:
                written.write(buffer.getbuffer())
                written.flush()
                os.fsync(written.fileno())
        except OSError as err:
            partial.unlink(missing_ok=True)
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            free = shutil.disk_usage(path.parent).free
            raise DiskFullError(f"no space left in {path.parent} for {path.name}: a checkpoint needs "
                                f"{mib(buffer.tell())}, {mib(free)} is free; the earlier checkpoints are intact: "
                                "free some space, then resume with ckpt_path=last") from None
        os.replace(partial, path)


class EpochCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, whose last.ckpt is the end of every epoch, as `ckpt_path=last` needs: Lightning
    2.6 writes it only when it also writes a best checkpoint, so on a plateau last.ckpt would stay epochs behind."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def load_state_dict(self, state_dict: dict) -> None:
        """A run folder moved with its checkpoints (the old folder is gone, the new one holds them) resumes with its
        best checkpoint and score: the saved paths move with it. Lightning would keep only the old best path, and
        test a file that is gone. A checkpoint resumed into another folder while its own still exists keeps
        Lightning's behaviour."""
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and Path(old) != Path(new) and not Path(old).exists() and Path(new).is_dir():
            def moved(path: str) -> str:
                return str(Path(new) / Path(path).relative_to(old)) if path and Path(path).is_relative_to(old) else path

            state_dict = {**state_dict, "dirpath": new,
                          **{key: moved(state_dict[key]) for key in ("best_model_path", "kth_best_model_path",
                                                                      "last_model_path") if key in state_dict},
                          "best_k_models": {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)

    def _save_last_if_missed(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


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
            if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
                resume = ("rerun the sweep's command into its folder (hydra.sweep.dir) to continue it: this job "
                          + (f"resumes from {last}" if last.is_file() else "runs again, with no full epoch done"))
            else:
                resume = f"resume from {last} with ckpt_path=last" if last.is_file() else "no full epoch to resume from"
            print(f"\ninterrupted at epoch {trainer.current_epoch}, step {trainer.global_step}: saved "
                  f"{folder / INTERRUPTED}; {resume}", flush=True)

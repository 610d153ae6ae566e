"""Work that survives a crash: checkpoints written atomically, a checkpoint on Ctrl-C or SIGTERM, one writer per
run folder, and finding the run that `ckpt_path=last` resumes."""

import errno
import inspect
import io
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning_fabric.plugins import TorchCheckpointIO
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mnistlab import __version__
from mnistlab.data import MNISTDataModule
from mnistlab.errors import ConfigError, DiskFullError
from mnistlab.models.ensemble import Ensemble
from mnistlab.models.registry import build_network, check_network_config

LAST = "last.ckpt"
INTERRUPTED = "interrupted.ckpt"
LIGHTNING_KEYS = ("pytorch-lightning_version", "state_dict")  # what every Lightning checkpoint holds
# Every checkpoint says which mnistlab wrote it, in which format (Classifier.on_save_checkpoint): a later
# format change makes older mnistlabs name the version to upgrade to instead of failing somewhere inside.
MNISTLAB_KEY, CHECKPOINT_FORMAT = "mnistlab", 1


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


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


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


# Reading checkpoints back: for the tools, a teacher, a transfer.


def teacher_checkpoints(distill_teacher: str | list[str] | None) -> list[str]:
    """tricks.distill_teacher as a list: one checkpoint, or the members of an ensemble."""
    return [distill_teacher] if isinstance(distill_teacher, str) else list(distill_teacher or [])


def existing_checkpoint(checkpoint: str | Path, what: str) -> Path:
    """The checkpoint's path, or a ConfigError naming the setting `what` that pointed at nothing."""
    if not isinstance(checkpoint, str | Path):
        raise ConfigError(f"{what}={checkpoint}: takes one checkpoint path")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what}={checkpoint}: no such checkpoint file")
    return path


def read_checkpoint(checkpoint: str | Path, what: str) -> dict:
    """A mnistlab checkpoint's contents, loaded safely (`weights_only`: tensors and plain values, never code).
    A missing, unreadable, unsafe or foreign file, or one from a newer mnistlab, is one ConfigError line naming
    the setting `what` that pointed at it."""
    path = existing_checkpoint(checkpoint, what)
    check_stored_size(path, what)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"{what}={checkpoint}: {unreadable_reason(err)}") from None
    missing = [key for key in LIGHTNING_KEYS if not isinstance(saved, dict) or key not in saved]
    if missing:
        held = ", ".join(map(repr, list(saved)[:6])) if isinstance(saved, dict) else type(saved).__name__
        raise ConfigError(f"{what}={checkpoint}: not a mnistlab checkpoint (no {missing[0]!r} entry; it holds "
                          f"{held or 'nothing'})")
    written = saved.get(MNISTLAB_KEY, {})
    fmt = written.get("format", CHECKPOINT_FORMAT) if isinstance(written, dict) else None
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise ConfigError(f"{what}={checkpoint}: not a mnistlab checkpoint (its {MNISTLAB_KEY!r} entry is not "
                          "{'version': ..., 'format': N})")
    if fmt > CHECKPOINT_FORMAT:
        raise ConfigError(f"{what}={checkpoint}: written by mnistlab {written.get('version')} in checkpoint format "
                          f"{fmt}; this mnistlab ({__version__}) reads format {CHECKPOINT_FORMAT} and "
                          "older: upgrade mnistlab to read it")
    state = saved["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ConfigError(f"{what}={checkpoint}: not a mnistlab checkpoint (its 'state_dict' entry is not a mapping "
                          "of names to tensors)")
    for key, kind in (("epoch", int), ("global_step", int), ("datamodule_hyper_parameters", dict)):
        if key in saved and not isinstance(saved[key], kind):
            raise ConfigError(f"{what}={checkpoint}: not a mnistlab checkpoint (its {key!r} entry is a "
                              f"{type(saved[key]).__name__}, not a {kind.__name__})")
    # The model config only picks a registered network: checked here, before any caller builds anything.
    check_network_config(saved_model_config(saved, f"{what}={checkpoint}"), f"{what}={checkpoint}")
    return saved


# torch.save stores tensors uncompressed: a checkpoint whose archive unpacks to far more than its size is not one.
MAX_UNPACKED_RATIO = 4


def check_stored_size(path: Path, what: str) -> None:
    """One line for a checkpoint whose zip archive claims entries far larger than the file (a small file that
    would unpack to gigabytes), before any of it is read into memory."""
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        return  # not a zip archive: torch.load's own checks say what it is
    stored = path.stat().st_size
    if unpacked > MAX_UNPACKED_RATIO * stored + 2**20:
        raise ConfigError(f"{what}={path}: its archive claims {mib(unpacked)} unpacked from {mib(stored)}; a "
                          "checkpoint stores its tensors uncompressed: not read")


def load_net_state(checkpoint: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The network's tensors from a mnistlab checkpoint (`net.` prefix removed); `what` names the setting."""
    state = read_checkpoint(checkpoint, what)["state_dict"]
    return {name.removeprefix("net."): tensor for name, tensor in state.items() if name.startswith("net.")}


def load_network(checkpoint: str | Path, what: str) -> torch.nn.Module:
    """A trained network alone (on the CPU, in eval mode), rebuilt from the model config saved with its weights;
    `what` names the setting that pointed at the checkpoint. Bad files end in one ConfigError line."""
    saved = read_checkpoint(checkpoint, what)
    net = build_network(saved_model_config(saved, f"{what}={checkpoint}"), f"{what}={checkpoint}")
    try:
        net.load_state_dict({name.removeprefix("net."): tensor for name, tensor in saved["state_dict"].items()
                             if name.startswith("net.")})
    except Exception as err:
        raise ConfigError(f"{what}={checkpoint}: {unreadable_reason(err)}") from None
    return net.eval()


TRAINING_STATE = ("epoch", "global_step", "loops", "optimizer_states")  # what a resumed fit restores


def check_resumable(saved: dict, net: torch.nn.Module, what: str) -> None:
    """One line if a checkpoint cannot resume this run: it holds no training state (weights alone), or its
    weights do not fit the run's network `net` (another model, or other model settings)."""
    missing = [key for key in TRAINING_STATE if key not in saved]
    if missing:
        raise ConfigError(f"{what}: it holds weights but no training state to resume (no {missing[0]!r} entry); "
                          f"start from its weights with tricks.init_from={what.split('=', 1)[1]} instead")
    weights = {name.removeprefix("net."): tensor for name, tensor in saved["state_dict"].items()
               if name.startswith("net.")}
    own = net.state_dict()
    unfit = sorted(set(own) ^ set(weights)) or [name for name in own if own[name].shape != weights[name].shape]
    if unfit:
        trained = saved_model_config(saved, what).get("_target_")
        raise ConfigError(f"{what}: its weights ({trained}) do not fit this run's {type(net).__name__} "
                          f"({unfit[0]} differs): resume with the model settings it was trained with (its run "
                          "folder's .hydra/overrides.yaml)")


def saved_model_config(saved: dict, what: str) -> dict:
    """The model config a checkpoint was saved with; `what` names the checkpoint in the one-line error."""
    hyper_parameters = saved.get("hyper_parameters")
    if not isinstance(hyper_parameters, dict) or not isinstance(hyper_parameters.get("model"), dict):
        raise ConfigError(f"{what}: not a mnistlab checkpoint (no model config in its 'hyper_parameters' entry)")
    return hyper_parameters["model"]


def unreadable_reason(err: Exception) -> str:
    """Why a checkpoint did not load, in one line."""
    text = str(err)
    if "loading state_dict" in text:  # the saved model config rebuilds a network its weights do not fit
        details = "; ".join(line.strip() for line in text.splitlines()[1:] if line.strip())
        details = details if len(details) <= 240 else details[:240] + " ..."
        return f"its weights do not fit the model config saved with them ({details})"
    unsafe = re.search(r"GLOBAL (\S+)", text)  # what a weights_only load refused to import
    if unsafe:
        return (f"it holds Python objects ({unsafe.group(1)}) that a safe load (weights_only) refuses to run, and "
                "nothing of it ran; a mnistlab checkpoint holds only tensors and plain values")
    located = re.search(r"Error locating target '([^']+)'", text)
    if located:
        return f"its network {located.group(1)} does not exist in this mnistlab ({__version__})"
    if isinstance(err, KeyError):
        return f"not a mnistlab checkpoint (no {err} entry)"
    if isinstance(err, OSError | EOFError | pickle.UnpicklingError) or "zip archive" in text:  # garbage, cut short
        return f"truncated, corrupt or not a PyTorch checkpoint ({type(err).__name__})"
    return f"not a mnistlab checkpoint ({text.splitlines()[0] if text else type(err).__name__})"


def is_segmentation(saved: dict) -> bool:
    """Whether a checkpoint's contents are a segmentation run's (its data module made canvases)."""
    return "canvas_size" in (saved.get("datamodule_hyper_parameters") or {})


def load_datamodule(checkpoint: str | Path, overrides: dict[str, object]) -> MNISTDataModule:
    """The data a checkpoint was trained on (its data module's settings are saved in it: digits, or canvases of
    them for segmentation), with `data.KEY=VALUE` overrides on top: another folder (`data.root`) or another
    dataset of the same format (`data.name`, `.mean`, `.std`). Downloading stays off unless
    `data.download=true`."""
    from mnistlab.canvas import CanvasDataModule  # canvases are digits: canvas.py builds on data.py

    path = existing_checkpoint(checkpoint, "ckpt_path")
    contents = read_checkpoint(path, "ckpt_path")
    saved = contents.get("datamodule_hyper_parameters")
    run_config = path.resolve().parents[1] / ".hydra" / "config.yaml"  # older checkpoints: the run's config
    if saved is None and run_config.is_file():
        data = OmegaConf.load(run_config).data
        saved = {key: OmegaConf.to_object(data[key]) if OmegaConf.is_config(data[key]) else data[key]
                 for key in data if key != "_target_"}
    kinds = (MNISTDataModule, CanvasDataModule) if is_segmentation(contents) else (MNISTDataModule,)
    defaults = {name: p.default for kind in kinds for name, p in inspect.signature(kind).parameters.items()
                if p.kind is not inspect.Parameter.VAR_KEYWORD}
    settings = {**defaults, **(saved or {}), "download": False}
    for key, value in overrides.items():
        name = key.removeprefix("data.")
        if name not in defaults or name in ("augment", "recipe_augment"):
            allowed = ", ".join(f"data.{k}" for k in defaults if k not in ("augment", "recipe_augment"))
            raise ConfigError(f"unknown key {key!r}; allowed: {allowed}")
        settings[name] = setting_value(key, value, defaults[name])
    return kinds[-1](**settings)


def setting_value(key: str, value: object, default: object) -> object:
    """`value` as the type of the setting's default (a command line's `data.val_size=1000` or `"1000"`)."""
    if value is None or default is None or isinstance(default, str):
        return value
    kind = type(default)
    if (kind is bool and not isinstance(value, bool)) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{key}={value}: takes {kind.__name__} values")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value}: takes {kind.__name__} values") from None


def load_teacher(checkpoints: str | list[str], num_classes: int) -> torch.nn.Module:
    """A frozen network in eval mode from an earlier run's checkpoint, for knowledge distillation; from a list of
    checkpoints, their ensemble (the networks may differ in size)."""
    nets = []
    for checkpoint in teacher_checkpoints(checkpoints):
        net = load_network(checkpoint, "tricks.distill_teacher")
        if net.num_classes != num_classes:
            raise ConfigError(f"tricks.distill_teacher={checkpoint}: the teacher predicts {net.num_classes} "
                              f"classes, this run {num_classes}")
        nets.append(net)
    teacher = nets[0] if len(nets) == 1 else Ensemble(nets)
    return teacher.eval().requires_grad_(False)

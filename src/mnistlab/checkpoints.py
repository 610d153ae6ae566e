"""Reading checkpoints back, safely: for the tools, a teacher, a transfer, a resumed run. A missing, corrupt,
unsafe or foreign file is one line naming the setting that pointed at it."""

import pickle
import zipfile
from pathlib import Path

import torch

from mnistlab import __version__
from mnistlab.errors import ConfigError
from mnistlab.models.contract import rename_legacy_keys
from mnistlab.models.ensemble import Ensemble
from mnistlab.models.registry import build_network, check_network_config

LIGHTNING_KEYS = ("pytorch-lightning_version", "state_dict")  # what every Lightning checkpoint holds
# Every checkpoint says which mnistlab wrote it, in which format (Classifier.on_save_checkpoint): a later
# format change makes older mnistlabs name the version to upgrade to instead of failing somewhere inside.
MNISTLAB_KEY, CHECKPOINT_FORMAT = "mnistlab", 1


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


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
        raise ConfigError(f"{what}={checkpoint}: {unloadable_reason(path, err)}") from None
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
    net, weights = saved_network(read_checkpoint(checkpoint, what), f"{what}={checkpoint}")
    net.load_state_dict(weights)
    return net.eval()


def saved_network(saved: dict, what: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The network a checkpoint's model config rebuilds (untrained) and the checkpoint's weights for it; one line
    naming the checkpoint `what` if they do not fit."""
    net = build_network(saved_model_config(saved, what), what)
    weights = net_weights(saved, net)
    check_weights_fit(net, weights, what)
    return net, weights


def net_weights(saved: dict, net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The network's tensors of a checkpoint's contents (`net.` prefix removed), under the names `net` has now (a
    network that renamed its layers names the old ones in LEGACY_KEYS)."""
    weights = {name.removeprefix("net."): tensor for name, tensor in saved["state_dict"].items()
               if name.startswith("net.")}
    rename_legacy_keys(weights, getattr(net, "LEGACY_KEYS", {}))
    return weights


def unfit_tensors(own: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> list[str]:
    """The names that keep `weights` from loading where `own` (a state dict) is: those only one of them has, else
    those whose shapes differ; none when they fit."""
    return sorted(set(own) ^ set(weights)) or [name for name in own if own[name].shape != weights[name].shape]


def check_weights_fit(net: torch.nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """One line, before load_state_dict would fail on them, if `weights` do not fit `net`, the network rebuilt from
    the model config saved with them."""
    own = net.state_dict()

    def shown(name: str) -> str:
        if name in own and name in weights:
            return f"{name}: {list(weights[name].shape)} saved, {list(own[name].shape)} built"
        return f"{name}: {'built' if name in own else 'saved'} only"

    unfit = unfit_tensors(own, weights)
    if unfit:
        details = "; ".join(shown(name) for name in unfit)
        details = details if len(details) <= 240 else details[:240] + " ..."
        raise ConfigError(f"{what}: its weights do not fit the model config saved with them ({details})")


TRAINING_STATE = ("epoch", "global_step", "loops", "optimizer_states")  # what a resumed fit restores


def check_resumable(saved: dict, net: torch.nn.Module, what: str) -> None:
    """One line if a checkpoint cannot resume this run: it holds no training state (weights alone), or its
    weights do not fit the run's network `net` (another model, or other model settings)."""
    missing = [key for key in TRAINING_STATE if key not in saved]
    if missing:
        raise ConfigError(f"{what}: it holds weights but no training state to resume (no {missing[0]!r} entry); "
                          f"start from its weights with tricks.init_from={what.split('=', 1)[1]} instead")
    unfit = unfit_tensors(net.state_dict(), net_weights(saved, net))
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


def unloadable_reason(path: Path, err: Exception) -> str:
    """Why torch.load (weights_only) refused a file, in one line: the Python objects it holds that a safe load does
    not run, as torch's own scan of the archive names them, or a file that is no checkpoint it can read."""
    if isinstance(err, pickle.UnpicklingError) and zipfile.is_zipfile(path):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except (RuntimeError, ValueError):  # an archive too damaged to scan
            unsafe = []
        if unsafe:
            return (f"it holds Python objects ({', '.join(unsafe)}) that a safe load (weights_only) refuses to run, "
                    "and nothing of it ran; a mnistlab checkpoint holds only tensors and plain values")
    return f"truncated, corrupt or not a PyTorch checkpoint ({type(err).__name__})"


def unreadable_reason(err: Exception) -> str:
    """Why a checkpoint that loaded safely did not rebuild its module, in one line."""
    if isinstance(err, KeyError):
        return f"not a mnistlab checkpoint (no {err} entry)"
    text = str(err)
    return f"not a mnistlab checkpoint ({text.splitlines()[0] if text else type(err).__name__})"


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

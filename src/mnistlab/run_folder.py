"""Run and sweep folders that cannot hurt the user: one writer per folder from the first byte (Hydra's `.hydra/`
included), a finished run or an earlier sweep never overwritten, and after a failed run only what that run made
is removed: never a folder that was there before it, never a mount point, nothing outside the run folder."""

import contextlib
import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mnistlab.callbacks.checkpointing import LAST
from mnistlab.errors import ConfigError

LOCK = ".lock"
# What a run writes before its first checkpoint: Hydra's config, the lock, the log, the loggers' folders.
UNSAVED_RUN = {".hydra", LOCK, "train.log", "tensorboard", "csv"}


@dataclass
class RunFolder:
    """A folder this process holds: the folders it created (innermost first), what the folder held before, and,
    inside what a run writes to (UNSAVED_RUN) and was there before, each file's size."""

    path: Path
    made: list[Path] = field(default_factory=list)
    before: set[str] = field(default_factory=set)
    sizes: dict[Path, int] = field(default_factory=dict)

    @classmethod
    def record(cls, path: Path, made: list[Path]) -> "RunFolder":
        before = {entry.name for entry in path.iterdir()}
        sizes = {}
        for name in before & UNSAVED_RUN:
            entry = path / name
            files = [entry] if not entry.is_dir() else [p for p in entry.rglob("*") if not p.is_symlink()]
            sizes |= {file: file.stat().st_size for file in files if file.is_file()}
        return cls(path, made, before, sizes)

    def new_entries(self) -> list[Path]:
        return [entry for entry in self.path.iterdir() if entry.name not in self.before]

    def nothing_saved(self) -> bool:
        """Whether what this run added is only what every run writes at its start: no checkpoint, no metrics."""
        new = self.new_entries()
        return {entry.name for entry in new} <= UNSAVED_RUN and not any(
            entry.suffix == ".ckpt" for path in new if path.is_dir() for entry in path.rglob("*"))

    def remove_what_it_made(self) -> None:
        """Remove what this run added: its new entries, the files it added inside folders that were there before,
        what it appended to files that were there before; then the folders it created, if empty (innermost
        first). A mount point is never removed or entered."""
        for entry in self.new_entries():
            if entry.name != LOCK:  # last: it keeps a second writer out meanwhile
                remove(entry)
        for name in self.before & UNSAVED_RUN:
            inside = self.path / name
            if inside.is_dir() and not inside.is_symlink() and not os.path.ismount(inside):
                for entry in sorted(inside.rglob("*"), reverse=True):  # the deepest first
                    if entry not in self.sizes and not any(entry in file.parents for file in self.sizes):
                        remove(entry)
        for file, size in self.sizes.items():
            if file.is_file() and file.stat().st_size > size:
                os.truncate(file, size)  # a log it appended to
        if LOCK not in self.before:
            (self.path / LOCK).unlink(missing_ok=True)
        for folder in self.made:
            if os.path.ismount(folder):
                break
            try:
                folder.rmdir()
            except OSError:  # not empty: something else lives there
                break


def remove(entry: Path) -> None:
    """A file, a link or a whole folder, unless it is a mount point."""
    if entry.is_dir() and not entry.is_symlink():
        if not os.path.ismount(entry):
            shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


_held: dict[Path, RunFolder] = {}


def holder(folder: Path) -> RunFolder | None:
    """This process's hold on `folder`, if it has one."""
    return _held.get(folder.resolve())


@contextlib.contextmanager
def hold(folder: Path):
    """Create `folder` if needed and hold an exclusive lock on it while the block runs; a second process that would
    write there (a resume, the same hydra.run.dir) stops at once with one line naming the holder. Re-entrant within
    a process. The operating system drops the lock when its process dies, so a killed run never blocks."""
    held = holder(folder)
    if held is not None:
        yield held
        return
    made = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        record = RunFolder.record(folder, made)
        handle = open(folder / LOCK, "a+")  # noqa: SIM115 - closed below, after the block
    except OSError as err:
        raise ConfigError(f"cannot make the run folder {folder}: {err.strerror or err}; give a writable "
                          "hydra.run.dir (or a shorter name=)") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "another process"
            raise ConfigError(f"{folder} is in use by process {pid}: one run writes a run folder at a time; "
                              "wait for it to end, or give another hydra.run.dir") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _held[folder.resolve()] = record
        try:
            yield record
        finally:
            del _held[folder.resolve()]


@contextlib.contextmanager
def hold_sweep(folder: Path):
    """An exclusive lock on a sweep folder for the sweep's life, taken on the folder itself (no file is written,
    so a refused sweep leaves the folder as it was). A second sweep into it is one line."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{folder} is in use by another sweep: one sweep writes a sweep folder at a time; wait "
                              "for it to end, or give another hydra.sweep.dir") from None
        yield
    finally:
        os.close(handle)


def check_writable(folder: Path) -> None:
    """One line if the run folder, or a folder in it that a run writes into (checkpoints/, tensorboard/), cannot
    be written: found before training, not by a checkpoint or an event-writer thread half-way through."""
    for place in (folder, *(entry for entry in folder.iterdir() if entry.is_dir() and not entry.is_symlink())):
        try:
            with tempfile.TemporaryFile(dir=place):
                pass
        except OSError as err:
            raise ConfigError(f"cannot write {place}: {err.strerror or err}; make it writable or give another "
                              "hydra.run.dir") from None


def check_not_finished(folder: Path) -> None:
    """A run never overwrites a finished one (its metrics.json): one line instead."""
    if (folder / "metrics.json").is_file():
        raise ConfigError(f"{folder} holds a finished run (metrics.json): a run never overwrites another; give "
                          "another hydra.run.dir, or remove that folder")


def check_not_in_use(folder: Path) -> None:
    """The one-line error of `hold`, before anything is written there."""
    if (folder / LOCK).is_file() and holder(folder) is None:
        with hold(folder):
            pass


def explicit_sweep_folder(args: list[str]) -> Path | None:
    """The hydra.sweep.dir a command gives, unless it is the default, named for the time it starts (always new)."""
    given = [arg.split("=", 1)[1].strip("'\"") for arg in args if arg.startswith("hydra.sweep.dir=")]
    if not given or "${" in given[-1]:
        return None
    return Path(given[-1]).expanduser()


def is_search(args: list[str]) -> bool:
    """An Optuna search: it continues its study in its folder, trial by trial, and may run in several processes."""
    return any(arg.startswith(("hparams_search=optuna", "hydra/sweeper=mnistlab_optuna")) for arg in args)


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

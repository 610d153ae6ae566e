"""The IDX files of a dataset on disk: found in a folder (plain or .gz, torchvision's layout), downloaded with
torchvision, or written from the digits bundled with mnistlab; read into tensors and checked."""

import contextlib
import io
import math
from pathlib import Path

import torch
from torchvision import datasets

from mnistlab.data.idx import read_idx, write_idx
from mnistlab.errors import DataError

TORCHVISION_DATASETS = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "kmnist": datasets.KMNIST}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = [name for pair in SPLIT_FILES.values() for name in pair]


# The default run's data folder, and the digits bundled for a machine that cannot download MNIST (bundled/README.md).
DEFAULT_ROOT = "data"
BUNDLED = Path(__file__).parents[1] / "bundled"
BUNDLED_FOLDER = "MNIST-bundled"
BUNDLED_IMAGES, BUNDLED_TRAIN, BUNDLED_VAL = 10_000, 8_000, 1_000


def write_bundled_mnist(folder: Path) -> Path:
    """The bundled official MNIST test digits, re-split after a seeded shuffle into `folder`: the first
    BUNDLED_TRAIN train, the rest test (as scripts/resplit_idx.py does). Written once; kept for later runs."""
    if find_idx_files(folder, "mnist") is None:
        images = read_idx(BUNDLED / "t10k-images-idx3-ubyte.gz")
        labels = read_idx(BUNDLED / "t10k-labels-idx1-ubyte.gz")
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        partial = folder.with_name(f".{folder.name}.partial")  # renamed into place whole: a kill leaves no half
        for prefix, part in (("train", order[:BUNDLED_TRAIN]), ("t10k", order[BUNDLED_TRAIN:])):
            write_idx(partial / f"{prefix}-images-idx3-ubyte.gz", images[part])
            write_idx(partial / f"{prefix}-labels-idx1-ubyte.gz", labels[part])
        partial.replace(folder)
    return folder


def candidate_folders(root: Path, name: str) -> list[Path]:
    """A plain folder holding the four IDX files, or torchvision's layout `root/<DatasetClass>/raw`."""
    return [root, root / TORCHVISION_DATASETS[name].__name__ / "raw"]


def find_idx_files(root: Path, name: str, stems: list[str] = ALL_FILES) -> dict[str, Path] | None:
    """The IDX files `stems` of `name` under `root` (plain or .gz, `-idx3` or `.idx3` spelling), or None."""
    for folder in candidate_folders(root, name):
        found = {}
        for stem in stems:
            dotted = stem.replace("-idx", ".idx")
            variants = (stem, f"{stem}.gz", dotted, f"{dotted}.gz")
            hit = next((folder / v for v in variants if (folder / v).is_file()), None)
            if hit is not None:
                found[stem] = hit
        if len(found) == len(stems):
            return found
    return None


def download(root: Path, name: str) -> str | None:
    """Fetch `name` with torchvision into root/<DatasetClass>/raw; returns why it failed, or None. A failed
    download leaves no empty folders behind."""
    print(f"{name}: no IDX files under {root}, downloading with torchvision ...")
    raw = candidate_folders(root, name)[1]
    made = [folder for folder in (raw, *raw.parents) if not folder.exists()]
    mirror_chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(mirror_chatter):
            TORCHVISION_DATASETS[name](str(root), train=True, download=True)
    except Exception as err:  # any failure to fetch ends in the same actionable message
        for folder in made:  # innermost first; a folder the download wrote into stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        # torchvision: "Error downloading F:", then per mirror "Tried URL, got:" and the cause; the last says why.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        return " ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else type(err).__name__
    return None


def load_split(files: dict[str, Path], split: str, image_size: int, num_classes: int):
    """(images uint8 [N, 1, H, W], labels int64 [N]) of one split, checked against each other and the config."""
    images_path, labels_path = (files[stem] for stem in SPLIT_FILES[split])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected images shaped [N, H, W], found {tuple(images.shape)}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected labels shaped [N], found {tuple(labels.shape)}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{images_path} holds no images: the {split} split needs at least one")
    if tuple(images.shape[1:]) != (image_size, image_size):
        raise DataError(f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, "
                        f"but data.image_size={image_size}")
    if len(labels) and int(labels.max()) >= num_classes:
        raise DataError(f"{labels_path} holds label {int(labels.max())}, but data.num_classes={num_classes}")
    return images.unsqueeze(1), labels.long()


def dataset_statistics() -> dict[str, tuple[float, float]]:
    """Each dataset's pixel (mean, std), as its config (configs/data/NAME.yaml) states them."""
    from omegaconf import OmegaConf

    from mnistlab.config import CONFIG_DIR

    found = {}
    for path in sorted((CONFIG_DIR / "data").glob("*.yaml")):
        settings = OmegaConf.load(path)
        if {"name", "mean", "std"} <= set(settings):
            found[settings.name] = (float(settings.mean), float(settings.std))
    return found


def likely_dataset(images: torch.Tensor, name: str, mean: float, std: float) -> str | None:
    """The dataset that `images` (uint8) look like when it is clearly not `name` (whose statistics are `mean` and
    `std`): its pixels' mean and std far from those, and much nearer another dataset's. None when they fit."""
    sample = images[:5000].float().div(255)
    seen = torch.stack((sample.mean(), sample.std())).tolist()
    distance = lambda stats: math.dist(seen, stats)  # noqa: E731
    configured = distance((mean, std))
    others = {other: distance(stats) for other, stats in dataset_statistics().items() if other != name}
    nearest = min(others, key=others.get, default=None)
    if nearest is None or configured <= 0.1 or others[nearest] >= configured / 2:
        return None
    return nearest

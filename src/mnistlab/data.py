"""MNIST-style data kept whole on the training device as uint8 and cut into batches by index there."""

import contextlib
import io
import logging
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler
from torchvision import datasets

from mnistlab.errors import ConfigError, DataError
from mnistlab.execution import grouped, resolve_steps_per_execution
from mnistlab.idx import read_idx, write_idx

log = logging.getLogger(__name__)

TORCHVISION_DATASETS = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "kmnist": datasets.KMNIST}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = [name for pair in SPLIT_FILES.values() for name in pair]


# The default run's data folder, and the digits bundled for a machine that cannot download MNIST (bundled/README.md).
DEFAULT_ROOT = "data"
BUNDLED = Path(__file__).parent / "bundled"
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


class RandomAffine(nn.Module):
    """Rotation, shift, scale and (optionally) a horizontal flip, drawn independently for every image of a
    batch, on the batch's device. torchvision's random transforms draw one set of parameters for a whole
    batch tensor; this draws N. Flip only what is symmetric (clothing, not digits): `hflip` is a probability.
    """

    def __init__(self, degrees: float = 10.0, translate: float = 0.1, scale: float = 0.1, hflip: float = 0.0):
        super().__init__()
        self.degrees, self.translate, self.scale, self.hflip = degrees, translate, scale, hflip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(self.draw(x.shape[0], x.device).to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)

    def draw(self, count: int, device: torch.device) -> torch.Tensor:
        """`count` random transforms as affine_grid's matrices [count, 2, 3]."""
        u = torch.rand(count, 5, device=device)
        angle = (u[:, 0] * 2 - 1) * math.radians(self.degrees)
        zoom = 1 + (u[:, 1] * 2 - 1) * self.scale
        shift = (u[:, 2:4] * 2 - 1) * 2 * self.translate  # grid coordinates span [-1, 1]: a width is 2
        mirror = torch.where(u[:, 4] < self.hflip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        return torch.stack([torch.stack([cos * mirror, -sin, shift[:, 0]], 1),
                            torch.stack([sin * mirror, cos, shift[:, 1]], 1)], 1)


class RandomErasing(nn.Module):
    """Random erasing (Zhong et al., arXiv 1708.04896) drawn independently for every image: with probability
    `p`, one rectangle covering `scale` of the image at aspect ratio `ratio` is set to 0, the background.
    Rectangles larger than the image are clipped to it (torchvision retries instead)."""

    def __init__(self, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3)):
        super().__init__()
        self.p, self.scale, self.log_ratio = p, scale, (math.log(ratio[0]), math.log(ratio[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        u = torch.rand(n, 5, device=x.device)
        area = (self.scale[0] + u[:, 0] * (self.scale[1] - self.scale[0])) * height * width
        aspect = torch.exp(self.log_ratio[0] + u[:, 1] * (self.log_ratio[1] - self.log_ratio[0]))
        box_h = (area * aspect).sqrt().clamp(max=height)
        box_w = (area / aspect).sqrt().clamp(max=width)
        top, left = u[:, 2] * (height - box_h), u[:, 3] * (width - box_w)
        rows = torch.arange(height, device=x.device).view(1, -1, 1)
        cols = torch.arange(width, device=x.device).view(1, 1, -1)
        inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
                  & (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1)))
        erase = inside & (u[:, 4] < self.p).view(-1, 1, 1)
        return x.masked_fill(erase.unsqueeze(1), 0.0)


AUGMENT_KEYS = ("degrees", "translate", "scale", "hflip", "erase")


def build_augment(**settings: float) -> nn.Module:
    """The `data.augment` settings (AUGMENT_KEYS, each 0 when absent) as one module: the affine part, then
    random erasing with probability `erase` (0 = off). Unknown keys and probabilities outside [0, 1] are a
    one-line ConfigError."""
    unknown = sorted(set(settings) - set(AUGMENT_KEYS))
    if unknown:
        raise ConfigError(f"data.augment: unknown key {unknown[0]!r}; allowed: {', '.join(AUGMENT_KEYS)}")
    value = {key: settings.get(key, 0.0) for key in AUGMENT_KEYS}
    for key in ("hflip", "erase"):
        if not 0 <= value[key] <= 1:
            raise ConfigError(f"data.augment.{key}={value[key]} is a probability: it must be in [0, 1]")
    steps = [RandomAffine(value["degrees"], value["translate"], value["scale"], value["hflip"])]
    if value["erase"] > 0:
        steps.append(RandomErasing(p=value["erase"]))
    return nn.Sequential(*steps)


class DeviceBatches:
    """Batches cut by index from tensors that already live on the training device.

    `sampler` orders the indices. Lightning calls `sampler.set_epoch` at each epoch start, so a seeded
    DistributedSampler gives a fresh, reproducible shuffle per epoch (and shards across DDP ranks). A training
    loader (`steps_per_execution` K > 1) yields groups of K batches (execution.StepGroup), at most `limit` batches
    an epoch (trainer.limit_train_batches, counted in batches whatever K), and a resumed epoch starts after the
    groups it ran (`done`).
    """

    batch_sampler = None  # Lightning reads this DataLoader attribute once a loader has a `sampler`

    def __init__(self, images, labels, batch_size: int, sampler, transform, drop_last: bool = False,
                 steps_per_execution: int | None = None, limit: int | None = None,
                 done: Callable[[], int] = lambda: 0):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.sampler, self.transform, self.drop_last = sampler, transform, drop_last
        self.steps_per_execution, self.limit, self.done = steps_per_execution, limit, done

    def num_batches(self) -> int:
        n = len(self.sampler)
        count = n // self.batch_size if self.drop_last and n >= self.batch_size else math.ceil(n / self.batch_size)
        return count if self.limit is None else min(count, self.limit)

    def __len__(self) -> int:
        count = self.num_batches()
        return count if self.steps_per_execution is None else math.ceil(count / self.steps_per_execution)

    def batches(self, start: int = 0):
        """The epoch's batches from index `start` on."""
        order = torch.tensor(list(self.sampler), device=self.images.device)
        for first in range(start * self.batch_size, self.num_batches() * self.batch_size, self.batch_size):
            index = order[first : first + self.batch_size]
            yield self.transform(self.images[index]), self.labels[index]

    def __iter__(self):
        per_group = self.steps_per_execution or 1
        groups = grouped(self.batches, self.num_batches(), per_group, self.done)
        return groups if per_group > 1 else (group.first() for group in groups)  # K=1: plain batches


class MNISTDataModule(pl.LightningDataModule):
    """MNIST, Fashion-MNIST or KMNIST: official test set as test, the last `val_size` training images as
    validation (the same slice whatever the seed; 0: none, every image trains), the first `train_size` of the
    rest (None: all of them) as training, everything moved once to the device."""

    def __init__(self, name: str = "mnist", root: str = DEFAULT_ROOT, download: bool = True, val_size: int = 5000,
                 train_size: int | None = None, batch_size: int = 128, eval_batch_size: int = 1000,
                 mean: float = 0.1307, std: float = 0.3081, image_size: int = 28, in_channels: int = 1,
                 num_classes: int = 10, augment: dict | str | None = None, recipe_augment: dict | None = None,
                 seed: int = 0, steps_per_execution: int | str = 1):
        super().__init__()
        if augment == "recipe":  # the augmentation that suits this dataset's images, chosen per dataset
            augment = recipe_augment
        elif isinstance(augment, str):
            raise ConfigError(f"data.augment={augment!r}: give null, recipe (data.recipe_augment) or settings such as "
                              f"{{degrees: 10, translate: 0.1}} (keys: {', '.join(AUGMENT_KEYS)})")
        augment = dict(augment) if augment else None  # a plain dict (not Hydra's DictConfig) in the checkpoint
        recipe_augment = dict(recipe_augment) if recipe_augment else None
        # Saved in every checkpoint: mnistlab-eval and mnistlab-predict rebuild the run's data from it alone.
        self.save_hyperparameters(logger=False)
        if name not in TORCHVISION_DATASETS:
            raise ConfigError(f"data.name={name!r} is not a known dataset; choose one of "
                              f"{', '.join(sorted(TORCHVISION_DATASETS))}")
        self.name, self.root, self.allow_download = name, Path(root).expanduser(), download
        self.val_size, self.train_size = val_size, train_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.mean, self.std, self.image_size, self.num_classes = mean, std, image_size, num_classes
        self.augment = build_augment(**augment) if augment else None
        self.seed, self.steps_per_execution = seed, steps_per_execution
        self.download_error: str | None = None
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def needed_files(self, stage: str | None) -> list[str]:
        """Testing a saved model needs the test files only (a folder may hold nothing else); fitting needs all."""
        testing = stage == "test" or (self.trainer is not None and self.trainer.state.fn == "test")
        return list(SPLIT_FILES["test"]) if testing else ALL_FILES

    def prepare_data(self) -> None:
        if find_idx_files(self.root, self.name, self.needed_files(None)) is None and self.allow_download:
            self.download_error = download(self.root, self.name)
        if find_idx_files(self.root, self.name, self.needed_files(None)) is None and self.serves_bundled():
            write_bundled_mnist(self.root / BUNDLED_FOLDER)

    def serves_bundled(self) -> bool:
        """The default run's data (MNIST in the default folder) falls back to the bundled digits when that folder
        holds no MNIST and none could be downloaded; a data.root the user gave stays an error."""
        return self.name == "mnist" and self.root == Path(DEFAULT_ROOT)

    def setup(self, stage: str | None = None) -> None:
        stems = self.needed_files(stage)
        if "train" in self.splits or (stage == "test" and "test" in self.splits):
            return
        files = find_idx_files(self.root, self.name, stems)
        if files is None and self.serves_bundled() and find_idx_files(self.root / BUNDLED_FOLDER, self.name):
            why = (f"the download failed ({self.download_error})" if self.download_error else
                   "downloading is off" if not self.allow_download else "none was downloaded")
            self.root, self.val_size = self.root / BUNDLED_FOLDER, min(self.val_size, BUNDLED_VAL)
            log.warning(f"no MNIST in {DEFAULT_ROOT} and {why}: using the {BUNDLED_IMAGES:,} digits bundled with "
                        f"mnistlab (MNIST's official test set) re-split into {BUNDLED_TRAIN:,} training digits (the "
                        f"last {self.val_size:,} of them validate) and {BUNDLED_IMAGES - BUNDLED_TRAIN:,} test "
                        f"digits, in {self.root}; for the full MNIST, run once online or copy its four files into "
                        f"{DEFAULT_ROOT}/")
            files = find_idx_files(self.root, self.name, stems)
        if files is None:
            raise DataError(self._missing_files_message(stems))
        splits = {"test": load_split(files, "test", self.image_size, self.num_classes)}
        if stems == ALL_FILES:
            images, labels = load_split(files, "train", self.image_size, self.num_classes)
            if not 0 <= self.val_size < len(images):
                raise ConfigError(f"data.val_size={self.val_size} must be between 0 and {len(images) - 1}: the "
                                  f"training split ({files[SPLIT_FILES['train'][0]]}) holds {len(images)} images")
            cut = len(images) - self.val_size
            if self.train_size is not None and not 1 <= self.train_size <= cut:
                raise ConfigError(f"data.train_size={self.train_size} must be between 1 and {cut}: that many "
                                  f"training images remain after the validation slice (data.val_size="
                                  f"{self.val_size}) of {files[SPLIT_FILES['train'][0]]}")
            train = cut if self.train_size is None else self.train_size
            likely = likely_dataset(images, self.name, self.mean, self.std)
            if likely is not None:  # Fashion-MNIST's files under data=mnist, say: it would train, on the wrong stats
                log.warning(f"{files[SPLIT_FILES['train'][0]]} looks like {likely}, not {self.name}: its pixels' "
                            f"statistics are {likely}'s; add data={likely} if that is what it holds")
            splits["train"] = images[:train], labels[:train]
            if self.val_size:
                splits["val"] = images[cut:], labels[cut:]
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.splits = {split: (x.to(device), y.to(device)) for split, (x, y) in splits.items()}

    def _missing_files_message(self, stems: list[str]) -> str:
        folders = " or ".join(str(folder) for folder in candidate_folders(self.root, self.name))
        why = (f"the download failed ({self.download_error})" if self.allow_download
               else "downloading is off (data.download=false)")
        return (f"no {self.name} data in {folders}: expected {', '.join(stems)} (plain or .gz); {why}. "
                f"copy the files into {self.root}, or point data.root=PATH at a folder that holds them")

    def normalize(self, images: torch.Tensor, augment: nn.Module | None = None) -> torch.Tensor:
        """uint8 [N, 1, H, W] -> float, optionally augmented per image, then standardised with the dataset's
        mean and std."""
        x = images.float().div_(255)
        if augment is not None:
            x = augment(x)
        return x.sub_(self.mean).div_(self.std)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised images back to [0, 1], for display."""
        return (x * self.std + self.mean).clamp(0, 1)

    @property
    def class_names(self) -> list[str]:
        """Short class names: "0" for MNIST's "0 - zero", torchvision's names otherwise."""
        return [name.split(" - ")[0] for name in TORCHVISION_DATASETS[self.name].classes][: self.num_classes]

    def first_images(self, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `count` standardised images of a split and their labels: a fixed set to watch."""
        images, labels = self.splits[split]
        return self.normalize(images[:count]), labels[:count]

    def _batches(self, split: str, batch_size: int, shuffle: bool, augment: nn.Module | None = None,
                 **training) -> DeviceBatches:
        images, labels = self.splits[split]
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = DistributedSampler(range(len(labels)), num_replicas=world, rank=rank, shuffle=shuffle,
                                     seed=self.seed)
        return DeviceBatches(images, labels, batch_size, sampler, partial(self.normalize, augment=augment),
                             drop_last=shuffle, **training)

    def grouping(self) -> dict:
        """How the training loader groups its batches (see DeviceBatches): K, the batch limit, the resume point."""
        trainer = self.trainer
        limit = getattr(trainer, "limit_train_batches", None)
        progress = trainer.fit_loop.epoch_loop.batch_progress if trainer else None
        return {"steps_per_execution": resolve_steps_per_execution(self.steps_per_execution, self.batch_size,
                                                                   trainer),
                "limit": limit if isinstance(limit, int) and not isinstance(limit, bool) else None,
                "done": (lambda: progress.current.completed) if progress else (lambda: 0)}

    def train_dataloader(self) -> DeviceBatches:
        return self._batches("train", self.batch_size, shuffle=True, augment=self.augment, **self.grouping())

    def val_dataloader(self) -> DeviceBatches | list:
        # No validation split (val_size=0): an empty list, which Lightning takes as "skip validation".
        return self._batches("val", self.eval_batch_size, shuffle=False) if "val" in self.splits else []

    def test_dataloader(self) -> DeviceBatches:
        return self._batches("test", self.eval_batch_size, shuffle=False)

"""MNIST-style data kept whole on the training device as uint8 and cut into batches by index there."""

import logging
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from mnistlab.data.augment import AUGMENT_KEYS, build_augment
from mnistlab.data.batches import DeviceBatches
from mnistlab.data.files import (
    ALL_FILES,
    BUNDLED_FOLDER,
    BUNDLED_IMAGES,
    BUNDLED_TRAIN,
    BUNDLED_VAL,
    DEFAULT_ROOT,
    SPLIT_FILES,
    TORCHVISION_DATASETS,
    candidate_folders,
    download,
    find_idx_files,
    likely_dataset,
    load_split,
    write_bundled_mnist,
)
from mnistlab.errors import ConfigError, DataError
from mnistlab.execution import resolve_steps_per_execution

log = logging.getLogger(__name__)


class MNISTDataModule(pl.LightningDataModule):
    """MNIST, Fashion-MNIST or KMNIST: official test set as test, the last `val_size` training images as
    validation (the same slice whatever the seed; 0: none, every image trains), the first `train_size` of the
    rest (None: all of them) as training, everything moved once to the device.

    Every setting is given: configs/data/ states them (mnist.yaml), and is their only default."""

    ITEMS = "images"  # what one training example is, in reports

    def __init__(self, *, name: str, root: str, download: bool, val_size: int, train_size: int | None,
                 batch_size: int, eval_batch_size: int, mean: float, std: float, image_size: int, in_channels: int,
                 num_classes: int, augment: dict | str | None, recipe_augment: dict | None, seed: int,
                 steps_per_execution: int | str):
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
            raise ConfigError(f"data.name={name!r} must be one of {', '.join(sorted(TORCHVISION_DATASETS))}")
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

    # A plain training loop's data (mnistlab-bench's floor): uint8 batches on the device, no Lightning.

    def training_items(self) -> int:
        """Training examples an epoch."""
        return len(self.splits["train"][1])

    def epoch_description(self) -> str:
        val = len(self.splits["val"][1]) if "val" in self.splits else 0
        return f"{self.training_items()} training images, {val} validation"

    def plain_batches(self, batch_size: int):
        """One epoch's training batches (uint8 images, labels) in a fresh random order, the last partial batch
        dropped as the training loader drops it."""
        images, labels = self.splits["train"]
        order = torch.randperm(len(labels), device=labels.device)
        for step in range(len(labels) // batch_size):
            index = order[step * batch_size : (step + 1) * batch_size]
            yield images[index], labels[index]

    def plain_validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation examples (uint8) and their labels."""
        return self.splits["val"]

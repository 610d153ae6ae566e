"""Digits on a canvas, labelled pixel by pixel: the data of the segmentation task, from any MNIST-style IDX folder.

Each canvas (default 64x64) holds 1 to 3 digits pasted at random places, later ones on top; they may overlap
partly (of a few candidate places, each digit takes the one that overlaps the digits already there least). A pixel
is labelled with the class of the digit whose ink covers it (class d + 1 for digit d; ink: intensity >=
`ink_threshold`), 0 where no digit is. The faint rim of a stroke, below the threshold and over the background,
is neither ink nor background: it gets `ignore_index`, which the loss and the metrics skip. The image is the
brighter of the overlapping pixels, as ink on ink.

Training canvases are composed afresh for every batch on the device, from the training digits only; validation
canvases from the validation slice, test canvases from the official test digits, both composed once per seed.
`data.augment` (rotation, shift, scale, mirroring) warps each training canvas and its mask together.
"""

import torch
import torch.nn.functional as F

from mnistlab.data.augment import RandomAffine
from mnistlab.data.batches import DeviceBatches
from mnistlab.data.digits import MNISTDataModule
from mnistlab.errors import ConfigError

BACKGROUND = 0
CANDIDATES = 8  # places tried per digit; the least overlapping wins


def places(count: int, digits: int, size: int, digit: int, generator: torch.Generator | None,
           device: torch.device) -> torch.Tensor:
    """Top-left corners [count, digits, 2] (row, column): each digit at the candidate place that overlaps the
    boxes of the digits before it least."""
    chosen = torch.empty(count, digits, 2, dtype=torch.long, device=device)
    for j in range(digits):
        candidates = torch.randint(0, size - digit + 1, (count, CANDIDATES, 2), generator=generator, device=device)
        if j == 0:
            chosen[:, 0] = candidates[:, 0]
            continue
        # Overlap (in pixels) of each candidate box with each box placed so far, summed.
        gap = (candidates[:, :, None, :] - chosen[:, None, :j, :]).abs()  # [count, CANDIDATES, j, 2]
        overlap = (digit - gap).clamp(min=0).prod(-1).sum(-1)  # [count, CANDIDATES]
        chosen[:, j] = candidates.gather(1, overlap.argmin(1)[:, None, None].expand(-1, 1, 2))[:, 0]
    return chosen


def compose(images: torch.Tensor, labels: torch.Tensor, count: int, size: int, min_digits: int, max_digits: int,
            ink_threshold: int, ignore_index: int, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` canvases (uint8 [count, 1, size, size]) and their masks (int64 [count, size, size]) from digits
    (uint8 [N, 1, d, d]) and their labels [N], all on the digits' device: no per-canvas Python."""
    device, digit = images.device, images.shape[-1]
    chosen = torch.randint(0, len(labels), (count, max_digits), generator=generator, device=device)
    present = torch.arange(max_digits, device=device) < torch.randint(
        min_digits, max_digits + 1, (count, 1), generator=generator, device=device)
    corners = places(count, max_digits, size, digit, generator, device)
    canvas = torch.zeros(count, size, size, dtype=torch.uint8, device=device)
    mask = torch.full((count, size, size), BACKGROUND, dtype=torch.long, device=device)
    batch = torch.arange(count, device=device)[:, None, None]
    offsets = torch.arange(digit, device=device)
    for j in range(max_digits):  # later digits on top
        rows = (corners[:, j, 0, None] + offsets)[:, :, None]  # [count, d, 1]
        cols = (corners[:, j, 1, None] + offsets)[:, None, :]  # [count, 1, d]
        patch = images[chosen[:, j], 0] * present[:, j, None, None]  # [count, d, d]; absent digits are blank
        canvas[batch, rows, cols] = torch.maximum(canvas[batch, rows, cols], patch)
        under = mask[batch, rows, cols]
        ink = patch >= ink_threshold
        rim = (patch > 0) & ~ink & (under == BACKGROUND)
        label = (labels[chosen[:, j]] + 1)[:, None, None]
        mask[batch, rows, cols] = torch.where(ink, label, torch.where(rim, ignore_index, under))
    return canvas[:, None], mask


def warp_together(affine: RandomAffine, canvas: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One random transform per canvas, applied to the canvas (bilinear) and to its mask (nearest neighbour, so
    every pixel keeps a label that exists); what comes in from outside the canvas is background in both."""
    grid = F.affine_grid(affine.draw(len(canvas), canvas.device), list(canvas.shape), align_corners=False)
    image = F.grid_sample(canvas.float(), grid, align_corners=False).round().byte()
    labels = F.grid_sample(mask[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0].long()
    return image, labels  # zero padding: black ink-free canvas, and BACKGROUND (0) labels


class CanvasBatches(DeviceBatches):
    """Training batches composed on the fly: every batch is new canvases from the training digits."""

    def __init__(self, module: "CanvasDataModule", images: torch.Tensor, labels: torch.Tensor, canvases: int,
                 **grouping):
        world = module.trainer.world_size if module.trainer else 1
        steps = max(1, canvases // world // module.batch_size)
        # The sampler: Lightning reads it (and its length) as for any loader.
        super().__init__(images, labels, module.batch_size, range(steps * module.batch_size), None, **grouping)
        self.module = module

    def batches(self, start: int = 0):
        """New canvases for the batches from index `start` on (a resumed epoch's random state is restored)."""
        m = self.module
        for _ in range(start, self.num_batches()):
            canvas, mask = compose(self.images, self.labels, self.batch_size, m.canvas_size, m.min_digits,
                                   m.max_digits, m.ink_threshold, m.ignore_index)
            if m.augment is not None:
                canvas, mask = warp_together(m.augment, canvas, mask)
            yield m.normalize(canvas), mask


class CanvasDataModule(MNISTDataModule):
    """MNISTDataModule's digits (and its splits, folders and checks), served as labelled canvases: `num_classes`
    digit classes, and the background, class 0. Every setting is given: configs/task/segmentation.yaml states
    them, over configs/data/, and is their only default."""

    ITEMS = "canvases"

    def __init__(self, *, canvas_size: int, min_digits: int, max_digits: int, ink_threshold: int, ignore_index: int,
                 train_canvases: int, val_canvases: int, test_canvases: int, num_classes: int, **digits):
        super().__init__(num_classes=num_classes, **digits)
        self.save_hyperparameters(logger=False)
        num_classes += 1  # the background
        digit = self.image_size
        if canvas_size < digit:
            raise ConfigError(f"data.canvas_size={canvas_size} is smaller than a digit ({digit}x{digit}): give "
                              f"data.canvas_size >= {digit}")
        fit = 2 * canvas_size**2 // digit**2  # overlapping at most partly: their area at most twice the canvas
        if not 1 <= min_digits <= max_digits or max_digits > fit:
            raise ConfigError(f"data.min_digits={min_digits}, data.max_digits={max_digits}: need 1 <= min_digits <= "
                              f"max_digits <= {fit}, the most {digit}x{digit} digits that fit a {canvas_size}x"
                              f"{canvas_size} canvas overlapping at most partly")
        if 0 <= ignore_index < num_classes:
            raise ConfigError(f"data.ignore_index={ignore_index} is a class (0 background, 1-{num_classes - 1} the "
                              f"digits): give one outside 0..{num_classes - 1}, e.g. 255")
        for split, count in (("train", train_canvases), ("val", val_canvases), ("test", test_canvases)):
            if not isinstance(count, int) or count < 1:
                raise ConfigError(f"data.{split}_canvases={count} must be an integer >= 1")
        if not 1 <= ink_threshold <= 255:
            raise ConfigError(f"data.ink_threshold={ink_threshold} must be in [1, 255] (a pixel's uint8 intensity)")
        if self.augment is not None:  # canvas and mask warp together; erasing would leave labels without ink
            if len(self.augment) > 1:
                raise ConfigError("data.augment.erase: random erasing blanks ink that the mask still labels; "
                                  "segmentation takes degrees, translate, scale and hflip")
            self.augment = self.augment[0]
        self.canvas_size, self.min_digits, self.max_digits = canvas_size, min_digits, max_digits
        self.ink_threshold, self.ignore_index = ink_threshold, ignore_index
        self.canvases = {"train": train_canvases, "val": val_canvases, "test": test_canvases}
        self.segmentation_classes = num_classes
        self.fixed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        for split, offset in (("val", 1), ("test", 2)):  # fixed per seed, whatever the training draws
            if split in self.splits and split not in self.fixed:
                images, labels = self.splits[split]
                generator = torch.Generator(device=images.device).manual_seed(self.seed * 1000 + offset)
                self.fixed[split] = compose(images, labels, self.canvases[split], self.canvas_size, self.min_digits,
                                            self.max_digits, self.ink_threshold, self.ignore_index, generator)

    @property
    def class_names(self) -> list[str]:
        return ["background", *super().class_names]

    def first_images(self, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        canvases, masks = self.fixed[split]
        return self.normalize(canvases[:count]), masks[:count]

    def _fixed_batches(self, split: str) -> DeviceBatches:
        canvases, masks = self.fixed[split]
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        share = range(rank, len(masks), world)
        return DeviceBatches(canvases, masks, self.eval_batch_size, share, self.normalize)

    def train_dataloader(self) -> CanvasBatches:
        images, labels = self.splits["train"]
        return CanvasBatches(self, images, labels, self.canvases["train"], **self.grouping())

    def val_dataloader(self) -> DeviceBatches | list:
        return self._fixed_batches("val") if "val" in self.fixed else []

    def test_dataloader(self) -> DeviceBatches:
        return self._fixed_batches("test")

    def training_items(self) -> int:
        return self.canvases["train"]

    def epoch_description(self) -> str:
        return (f"{self.training_items()} training canvases an epoch, composed per batch; validation on "
                f"{len(self.fixed['val'][1]) if 'val' in self.fixed else 0} fixed canvases")

    def plain_batches(self, batch_size: int):
        """One epoch's training canvases, composed per batch as the training loader composes them (unaugmented)."""
        images, labels = self.splits["train"]
        for _ in range(self.canvases["train"] // batch_size):
            yield compose(images, labels, batch_size, self.canvas_size, self.min_digits, self.max_digits,
                          self.ink_threshold, self.ignore_index)

    def plain_validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fixed["val"]

"""Digit canvases for segmentation (mnistlab.data.canvas): pixel labels follow the ink, later digits lie on top,
validation and test canvases are fixed per seed, bad settings are one line."""

import pytest
import torch

from mnistlab.data.augment import RandomAffine
from mnistlab.data.canvas import BACKGROUND, CanvasDataModule, compose, warp_together
from mnistlab.errors import ConfigError

from .conftest import configured

INK, IGNORE = 128, 255


def digits(n: int = 20, size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Stroke-like digits: a bright bar with a faint rim, on a blank square."""
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    images[:, 0, 8:20, 10:18] = 60  # the rim: some ink, below the threshold
    images[:, 0, 10:18, 12:16] = 250  # the stroke
    return images, torch.arange(n) % 10


def test_pixels_are_labelled_by_the_ink_that_covers_them():
    images, labels = digits()
    canvas, mask = compose(images, labels, 200, 64, 1, 3, INK, IGNORE, torch.Generator().manual_seed(0))
    assert canvas.shape == (200, 1, 64, 64) and canvas.dtype == torch.uint8
    assert mask.shape == (200, 64, 64) and mask.dtype == torch.long
    pixels = canvas[:, 0]
    assert (mask[pixels >= INK] >= 1).all() and (mask[pixels >= INK] <= 10).all()  # ink: a digit's class
    assert (pixels[mask == BACKGROUND] == 0).all()  # background: no ink at all
    rim = mask == IGNORE  # neither ink nor background
    assert rim.any() and ((pixels[rim] > 0) & (pixels[rim] < INK)).all()
    strokes = [len(set(m.unique().tolist()) - {BACKGROUND, IGNORE}) for m in mask]
    assert min(strokes) >= 1 and max(strokes) <= 3


def test_a_warp_moves_canvas_and_mask_together():
    images, labels = digits()
    canvas, mask = compose(images, labels, 64, 64, 1, 3, INK, IGNORE, torch.Generator().manual_seed(0))
    same = warp_together(RandomAffine(degrees=0, translate=0, scale=0), canvas, mask)
    assert torch.equal(same[0], canvas) and torch.equal(same[1], mask)  # no transform: nothing moves
    torch.manual_seed(0)
    warped, labelled = warp_together(RandomAffine(degrees=20, translate=0.1, scale=0.1), canvas, mask)
    assert warped.dtype == torch.uint8 and labelled.dtype == torch.long and not torch.equal(warped, canvas)
    assert set(labelled.unique().tolist()) <= set(mask.unique().tolist())  # nearest neighbour: no new labels
    # The stroke and its label moved together: nearly every inked pixel is labelled a digit, and no label sits on
    # an empty pixel (bilinear ink at a stroke's edge may be a shade off where nearest-neighbour labels cut).
    inked = warped[:, 0] >= INK
    assert (labelled[inked] != BACKGROUND).float().mean() > 0.97
    assert (warped[:, 0][(labelled >= 1) & (labelled <= 10)] > 0).float().mean() > 0.97


def test_later_digits_lie_on_top():
    # Two digits on a canvas their own size: the same place, so the later one covers the earlier entirely.
    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    images[0, 0], images[1, 0, 4:24, 4:24] = 200, 255
    canvas, mask = compose(images, torch.tensor([3, 7]), 300, 28, 2, 2, INK, IGNORE, torch.Generator().manual_seed(1))
    inner = mask[:, 4:24, 4:24]
    assert all(len(m.unique()) == 1 for m in inner)  # one class inside: the top digit's
    assert (canvas[:, 0, 4:24, 4:24] >= 200).all()  # ink over ink: the brighter shows
    both = (inner[:, 0, 0] == 8) & (mask[:, 0, 0] == 4)  # a 7 (class 8) on top of a 3 (class 4)
    assert both.any()


@pytest.fixture(scope="module")
def canvases(synthetic_root):
    def make(seed: int) -> CanvasDataModule:
        module = configured("data", "task=segmentation", root=str(synthetic_root), val_size=200, download=False,
                            seed=seed, val_canvases=50, test_canvases=60, train_canvases=256, batch_size=64)
        module.setup()
        return module
    return make


def test_validation_and_test_canvases_are_fixed_per_seed_and_training_ones_are_new(canvases):
    first, again, other = canvases(1), canvases(1), canvases(2)
    for split, count in (("val", 50), ("test", 60)):
        assert first.fixed[split][0].shape == (count, 1, 64, 64)
        assert torch.equal(first.fixed[split][0], again.fixed[split][0])
        assert torch.equal(first.fixed[split][1], again.fixed[split][1])
        assert not torch.equal(first.fixed[split][0], other.fixed[split][0])
    loader = first.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 4  # 256 canvases of 64
    (x1, y1), (x2, _) = batches[0], batches[1]
    assert x1.shape == (64, 1, 64, 64) and x1.dtype == torch.float32 and y1.shape == (64, 64, 64)
    assert not torch.equal(x1, x2)
    assert first.class_names[0] == "background" and len(first.class_names) == 11


@pytest.mark.parametrize(("settings", "message"), [
    ({"canvas_size": 20}, "data.canvas_size=20 is smaller than a digit (28x28): give data.canvas_size >= 28"),
    ({"max_digits": 11}, "data.min_digits=1, data.max_digits=11: need 1 <= min_digits <= max_digits <= 10"),
    ({"ignore_index": 3}, "data.ignore_index=3 is a class (0 background, 1-10 the digits): give one outside 0..10"),
    ({"ink_threshold": 0}, "data.ink_threshold=0 must be in [1, 255]"),
    ({"augment": {"erase": 0.5}}, "data.augment.erase: random erasing blanks ink that the mask still labels"),
])
def test_bad_canvas_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError) as error:
        configured("data", "task=segmentation", root="unused", **settings)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)

"""Image files of any size and format as what a network was trained on: grayscale, light ink on a dark background
(MNIST's polarity), cropped to the ink and framed as the dataset was built."""

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from mnistlab.errors import ConfigError

INVERT_CHOICES = ("auto", "true", "false")
FIT_CHOICES = ("ink", "whole")
# The share of the frame the ink's longer side fills, per dataset (MNIST: 20 of 28 pixels).
INK_SHARE = {"mnist": 20 / 28, "fashion_mnist": 1.0, "kmnist": 1.0}


def read_grayscale(path: str) -> torch.Tensor:
    """An image file as a float [H, W] tensor in [0, 1]. A missing or non-regular file (a pipe would block), an
    undecodable one, and one of more pixels than PIL's decompression-bomb limit are a one-line ConfigError."""
    if not Path(path).exists():
        raise ConfigError(f"images: {path}: no such file")
    if not Path(path).is_file():
        raise ConfigError(f"images: {path}: not a regular file (a folder, a pipe or a device)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # as large as a bomb: refused too
            with Image.open(path) as image:
                return torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ConfigError(f"images: {path}: more than {Image.MAX_IMAGE_PIXELS:,} pixels, PIL's limit for an image "
                          "it decodes; scale it down first") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ConfigError(f"images: {path}: cannot decode it as an image ({type(err).__name__})") from None


def needs_inversion(gray: torch.Tensor) -> bool:
    """Dark ink on a light background (a scan, a drawing) has a bright border."""
    border = torch.cat([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return float(border.mean()) > 0.5


def fit_to_frame(gray: torch.Tensor, size: int, ink_share: float) -> torch.Tensor:
    """Crop to the ink, scale its longer side to `ink_share` of the frame, and centre it (by centre of mass
    when the ink does not fill the frame, as MNIST does) in a size x size image."""
    ink = gray > 0.2 * float(gray.max())
    if not ink.any():
        return TF.resize(gray[None], [size, size], antialias=True)[0]
    rows, cols = ink.any(1).nonzero()[:, 0], ink.any(0).nonzero()[:, 0]
    crop = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    box = max(1, round(size * ink_share))
    scale = box / max(crop.shape)
    height, width = (max(1, round(side * scale)) for side in crop.shape)
    glyph = TF.resize(crop[None], [height, width], antialias=True)[0].clamp(0, 1)
    if ink_share < 1:  # shift so that the centre of mass lands on the frame's centre
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        mass = glyph.sum().clamp(min=1e-6)
        centre = (float((ys * glyph).sum() / mass), float((xs * glyph).sum() / mass))
    else:
        centre = ((height - 1) / 2, (width - 1) / 2)
    top = min(max(round((size - 1) / 2 - centre[0]), 0), size - height)
    left = min(max(round((size - 1) / 2 - centre[1]), 0), size - width)
    return F.pad(glyph, (left, size - width - left, top, size - height - top))


def prepare(path: str, invert: str, fit: str, size: int, ink_share: float) -> tuple[torch.Tensor, bool]:
    """(the image in [0, 1] as [1, size, size], whether it was inverted)."""
    gray = read_grayscale(path)
    inverted = needs_inversion(gray) if invert == "auto" else invert == "true"
    if inverted:
        gray = 1 - gray
    if fit == "whole":
        return TF.resize(gray[None], [size, size], antialias=True).clamp(0, 1), inverted
    return fit_to_frame(gray, size, ink_share)[None], inverted


def ink_band_height(gray: torch.Tensor) -> int | None:
    """The median height of the bands of consecutive rows that hold ink (one band per line of digits), or None
    where there is no ink."""
    peak = float(gray.max())
    if peak <= 0:
        return None
    rows = (gray > 0.5 * peak).any(1).int()
    edges = torch.diff(F.pad(rows, (1, 1))).nonzero()[:, 0]  # starts and ends of the bands, alternately
    heights = edges[1::2] - edges[::2]
    return round(float(heights.float().quantile(0.5)))

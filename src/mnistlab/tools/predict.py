"""mnistlab-predict: the top classes of a trained network for image files of any size and format, or, from a
segmentation checkpoint, each pixel's class as a colour mask.

    mnistlab-predict ckpt_path=CKPT images=[seven.png,shoe.jpg]
    mnistlab-predict ckpt_path=CKPT images=[scan.png] invert=false top=5
    mnistlab-predict ckpt_path=CKPT images=[crop.png] fit=whole
    mnistlab-predict ckpt_path=SEGMENTATION_CKPT images=[page.jpg] output=masks    # masks/page.mask.png

Each image becomes what the network was trained on: grayscale, light ink on a dark background (MNIST's
polarity; `invert=auto` flips images whose border is bright, `true`/`false` force it), cropped to its ink and
scaled into the frame as the dataset was built (MNIST: a 20x20 box centred by centre of mass in 28x28;
Fashion-MNIST and KMNIST: the whole frame), then standardised with the training set's mean and std.
`fit=whole` skips the cropping and resizes the whole image, for images already framed like the dataset's.

A segmentation network labels a whole page: the image, made light-on-dark the same way, is scaled so that its
digits are as tall as the training digits (`digit_height=auto` measures them: the median height of the bands
of rows that hold ink, one band per line of digits; or give their height in pixels), labelled, and the labels
scaled back to the image's size: `NAME.mask.png` (background black, each class its colour, as in TensorBoard) in
`output` (default: beside the image), and per image the classes found with their share of the labelled pixels.
"""

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from mnistlab.callbacks.views import colour_masks
from mnistlab.checkpoints import is_segmentation, load_datamodule, load_network, read_checkpoint
from mnistlab.errors import ConfigError
from mnistlab.tools.cli import run_tool

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


def predict(checkpoint: str, paths: list[str], invert: str = "auto", fit: str = "ink", top: int = 3) -> list[dict]:
    """For each image: its top `top` classes with probabilities."""
    if invert not in INVERT_CHOICES:
        raise ConfigError(f"invert={invert}: choose one of {', '.join(INVERT_CHOICES)}")
    if fit not in FIT_CHOICES:
        raise ConfigError(f"fit={fit}: choose one of {', '.join(FIT_CHOICES)}")
    if not paths:
        raise ConfigError("images=[] names no image: give one or more files, e.g. images=[a.png,b.jpg]")
    net = load_network(checkpoint, "ckpt_path")
    data = load_datamodule(checkpoint, {})
    if not 1 <= top <= data.num_classes:
        raise ConfigError(f"top={top}: must be between 1 and the {data.num_classes} classes")
    prepared = [prepare(path, invert, fit, data.image_size, INK_SHARE[data.name]) for path in paths]
    batch = torch.stack([image for image, _ in prepared])
    with torch.no_grad():
        probabilities = net(data.normalize(batch * 255)).softmax(1)  # normalize takes 0..255 pixels
    best = probabilities.topk(top, dim=1)
    names = data.class_names
    return [{"image": path, "inverted": inverted,
             "top": [(names[i], float(p)) for p, i in zip(values.tolist(), indices.tolist(), strict=True)]}
            for path, (_, inverted), values, indices in zip(paths, prepared, *best, strict=True)]


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


def segment(checkpoint: str, paths: list[str], invert: str = "auto", digit_height: int | str = "auto",
            output: str | None = None) -> list[dict]:
    """For each image: its colour mask written as NAME.mask.png, and the share of its labelled pixels per class."""
    if invert not in INVERT_CHOICES:
        raise ConfigError(f"invert={invert}: choose one of {', '.join(INVERT_CHOICES)}")
    if digit_height != "auto" and not (isinstance(digit_height, int) and digit_height >= 4):
        raise ConfigError(f"digit_height={digit_height}: give auto, or the digits' height in pixels (>= 4)")
    if not paths:
        raise ConfigError("images=[] names no image: give one or more files, e.g. images=[a.png,b.jpg]")
    net = load_network(checkpoint, "ckpt_path")
    data = load_datamodule(checkpoint, {})
    trained_height = round(data.image_size * INK_SHARE[data.name])  # the ink of a training digit, in pixels
    folder = Path(output) if output else None
    results = []
    for path in paths:
        gray = read_grayscale(path)
        inverted = needs_inversion(gray) if invert == "auto" else invert == "true"
        gray = 1 - gray if inverted else gray
        measured = ink_band_height(gray) if digit_height == "auto" else digit_height
        scale = trained_height / measured if measured else 1.0
        height, width = gray.shape
        size = [max(4, round(height * scale / 4) * 4), max(4, round(width * scale / 4) * 4)]  # the net pools by 4
        scaled = TF.resize(gray[None, None], size, antialias=True).clamp(0, 1)
        with torch.no_grad():
            labels = net(data.normalize(scaled * 255)).argmax(1)
        labels = TF.resize(labels[None].byte(), [height, width], interpolation=TF.InterpolationMode.NEAREST)[0, 0]
        mask = (colour_masks(labels[None].long(), net.num_classes, data.ignore_index)[0] * 255).byte()
        target = (folder or Path(path).parent) / f"{Path(path).stem}.mask.png"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.permute(1, 2, 0).numpy()).save(target)
        except OSError as err:
            raise ConfigError(f"output: cannot write {target} ({err.strerror or err})") from None
        counts = torch.bincount(labels.flatten().long(), minlength=net.num_classes)[1:]  # digits, not background
        shares = counts / counts.sum().clamp(min=1)
        found = [(data.class_names[i + 1], float(shares[i])) for i in shares.argsort(descending=True).tolist()
                 if shares[i] >= 0.05]
        results.append({"image": path, "inverted": inverted, "mask": str(target), "scale": scale, "found": found})
    return results


def predict_command(cfg: DictConfig, _args: list[str]) -> None:
    images = list(cfg.images) if OmegaConf.is_list(cfg.images) else [str(cfg.images)]
    if is_segmentation(read_checkpoint(cfg.ckpt_path, "ckpt_path")):
        rows = segment(cfg.ckpt_path, images, str(cfg.invert).lower(), cfg.digit_height, cfg.output)
        width = max(len(row["image"]) for row in rows)
        for row in rows:
            found = "   ".join(f"{name} {share:4.0%}" for name, share in row["found"]) or "no digit"
            note = " (inverted)" if row["inverted"] else ""
            print(f"{row['image']:<{width}}  {found}  -> {row['mask']}{note}")
        return
    rows = predict(cfg.ckpt_path, images, str(cfg.invert).lower(), cfg.fit, cfg.top)
    width = max(len(row["image"]) for row in rows)
    for row in rows:
        guesses = "   ".join(f"{name} {p:6.1%}" for name, p in row["top"])
        note = " (inverted)" if row["inverted"] else ""
        print(f"{row['image']:<{width}}  {guesses}{note}")


def main(argv: list[str] | None = None) -> None:
    run_tool(predict_command, "predict", __doc__, argv)

"""Per-image augmentation on the device, for whole batches at once: rotation, shift, scale, mirroring and
random erasing (`data.augment`)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.errors import ConfigError


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
    random erasing with probability `erase` (0 = off). An unknown key is a one-line ConfigError; the ranges are the
    rules table's (mnistlab.validation.RULES), checked before a run builds anything."""
    unknown = sorted(set(settings) - set(AUGMENT_KEYS))
    if unknown:
        raise ConfigError(f"data.augment: unknown key {unknown[0]!r}; allowed: {', '.join(AUGMENT_KEYS)}")
    value = {key: settings.get(key, 0.0) for key in AUGMENT_KEYS}
    steps = [RandomAffine(value["degrees"], value["translate"], value["scale"], value["hflip"])]
    if value["erase"] > 0:
        steps.append(RandomErasing(p=value["erase"]))
    return nn.Sequential(*steps)

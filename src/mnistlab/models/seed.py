"""The seed document's CNN: conv(5x5) -> ReLU -> max-pool, twice, then two linear layers; plus the
architecture tricks the seed asks about (bias=False + BatchNorm, stride versus pool, kernel size, dilation).
It follows the network contract of models/contract.py.
"""

from collections import OrderedDict
from typing import ClassVar

import torch
from torch import nn

from mnistlab.errors import ConfigError
from mnistlab.models.contract import rename_legacy_keys

DOWNSAMPLING = ("pool", "stride")


class SeedNet(nn.Module):
    """backbone: conv1 = Conv2d(1, 20, 5), pool, conv2 = Conv2d(20, 50, 5), pool;
    head: fc1 = Linear(800, 500), fc2 = Linear(500, 10).

    fc1's in-features (the seed's `4*4*50`) are measured by passing one blank image through the backbone,
    so they follow the input size, kernel size, dilation and downsampling.

    - batch_norm: conv1, conv2 and fc1 lose their bias and are each followed by BatchNorm, which has its own.
    - downsample="stride": each conv strides by 2 instead of being followed by a 2x2 max-pool; on 28x28
      inputs both give the seed's 24->12 and 8->4 shapes, with different values.
    - dropout: zeroes that share of fc1's outputs while training (Srivastava et al.), a regulariser aimed at
      fc1, which holds most of the weights; no parameters, so checkpoints load either way.

    Every setting is given: configs/model/seed.yaml states them (build_network fills what a config leaves out).
    """

    # Checkpoints written before the backbone/head split named the layers at the top level.
    LEGACY_KEYS: ClassVar[dict[str, str]] = {
        "conv1.": "backbone.conv1.", "bn1.": "backbone.bn1.", "conv2.": "backbone.conv2.", "bn2.": "backbone.bn2.",
        "fc1.": "head.fc1.", "bn3.": "head.bn3.", "fc2.": "head.fc2."}

    def __init__(self, *, in_channels: int, image_size: int, num_classes: int, conv_channels: tuple[int, int],
                 kernel_size: int, hidden: int, batch_norm: bool, downsample: str, dilation: int, dropout: float):
        super().__init__()
        if downsample not in DOWNSAMPLING:
            raise ConfigError(f"model.downsample={downsample!r} must be one of {', '.join(DOWNSAMPLING)}")
        self.input_shape = (in_channels, image_size, image_size)
        self.num_classes = num_classes
        first, second = conv_channels
        conv = dict(kernel_size=kernel_size, dilation=dilation, stride=2 if downsample == "stride" else 1,
                    bias=not batch_norm)

        def stage(index: int, channels_in: int, channels_out: int) -> list[tuple[str, nn.Module]]:
            return [(f"conv{index}", nn.Conv2d(channels_in, channels_out, **conv)),
                    (f"bn{index}", nn.BatchNorm2d(channels_out) if batch_norm else nn.Identity()),
                    (f"relu{index}", nn.ReLU()),
                    (f"pool{index}", nn.MaxPool2d(2) if downsample == "pool" else nn.Identity())]

        self.backbone = nn.Sequential(OrderedDict(stage(1, in_channels, first) + stage(2, first, second)))
        features = self._measure_features(in_channels, image_size)
        self.head = nn.Sequential(OrderedDict([
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(features, hidden, bias=not batch_norm)),
            ("bn3", nn.BatchNorm1d(hidden) if batch_norm else nn.Identity()),
            ("relu3", nn.ReLU()),
            ("dropout", nn.Dropout(dropout) if dropout else nn.Identity()),
            ("fc2", nn.Linear(hidden, num_classes)),
        ]))
        self._register_load_state_dict_pre_hook(_rename_seed_keys)

    def _measure_features(self, in_channels: int, image_size: int) -> int:
        self.eval()  # BatchNorm must not learn statistics from the blank probe image
        try:
            with torch.no_grad():
                return self.backbone(torch.zeros(1, in_channels, image_size, image_size))[0].numel()
        except RuntimeError as err:
            raise ConfigError(f"model: the conv stack leaves nothing of a {image_size}x{image_size} image "
                              f"({str(err).splitlines()[0]})") from None
        finally:
            self.train()

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """fc2's input: the penultimate features, [N, hidden]."""
        return self.head[:-1](self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _rename_seed_keys(state: dict, prefix: str, *_) -> None:
    rename_legacy_keys(state, SeedNet.LEGACY_KEYS, prefix)

"""The seed document's CNN: conv(5x5) -> ReLU -> max-pool, twice, then two linear layers; plus the
architecture tricks the seed asks about (bias=False + BatchNorm, stride versus pool, kernel size, dilation)."""

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.errors import ConfigError

DOWNSAMPLING = ("pool", "stride")


class SeedNet(nn.Module):
    """conv1 = Conv2d(1, 20, 5), conv2 = Conv2d(20, 50, 5), fc1 = Linear(800, 500), fc2 = Linear(500, 10).

    fc1's in-features (the seed's `4*4*50`) are measured by passing one blank image through the conv stack,
    so they follow the input size, kernel size, dilation and downsampling.

    - batch_norm: conv1, conv2 and fc1 lose their bias and are each followed by BatchNorm, which has its own.
    - downsample="stride": each conv strides by 2 instead of being followed by a 2x2 max-pool; on 28x28
      inputs both give the seed's 24->12 and 8->4 shapes, with different values.
    - dropout: zeroes that share of fc1's outputs while training (Srivastava et al.), a regulariser aimed at
      fc1, which holds most of the weights; no parameters, so checkpoints load either way.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 conv_channels: tuple[int, int] = (20, 50), kernel_size: int = 5, hidden: int = 500,
                 batch_norm: bool = False, downsample: str = "pool", dilation: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        if downsample not in DOWNSAMPLING:
            raise ConfigError(f"model.downsample={downsample!r} must be one of {', '.join(DOWNSAMPLING)}")
        self.input_shape = (in_channels, image_size, image_size)
        first, second = conv_channels
        conv = dict(kernel_size=kernel_size, dilation=dilation, stride=2 if downsample == "stride" else 1,
                    bias=not batch_norm)
        self.conv1 = nn.Conv2d(in_channels, first, **conv)
        self.bn1 = nn.BatchNorm2d(first) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(first, second, **conv)
        self.bn2 = nn.BatchNorm2d(second) if batch_norm else nn.Identity()
        self.pool = nn.MaxPool2d(2) if downsample == "pool" else nn.Identity()
        features = self._measure_features(in_channels, image_size)
        self.fc1 = nn.Linear(features, hidden, bias=not batch_norm)
        self.bn3 = nn.BatchNorm1d(hidden) if batch_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc2 = nn.Linear(hidden, num_classes)

    def _measure_features(self, in_channels: int, image_size: int) -> int:
        self.eval()  # BatchNorm must not learn statistics from the blank probe image
        try:
            with torch.no_grad():
                return self.features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        except RuntimeError as err:
            raise ConfigError(f"model: the conv stack leaves nothing of a {image_size}x{image_size} image "
                              f"({str(err).splitlines()[0]})") from None
        finally:
            self.train()

    def feature_layers(self) -> list[nn.Module]:
        """The conv stack (what transfer learning may freeze)."""
        return [self.conv1, self.bn1, self.conv2, self.bn2]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The conv stack, flattened: [N, C, H, W] -> [N, fc1.in_features]."""
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn3(self.fc1(self.features(x))))
        return self.fc2(self.dropout(x))

"""The seed document's CNN: conv(5x5) -> ReLU -> max-pool, twice, then two linear layers."""

import torch
import torch.nn.functional as F
from torch import nn


class SeedNet(nn.Module):
    """conv1 = Conv2d(1, 20, 5), conv2 = Conv2d(20, 50, 5), fc1 = Linear(800, 500), fc2 = Linear(500, 10).

    fc1's in-features (the seed's `4*4*50`) are measured by passing one blank image through the conv stack,
    so they follow the input size, the kernel size and any later variant of the stack.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 conv_channels: tuple[int, int] = (20, 50), kernel_size: int = 5, hidden: int = 500):
        super().__init__()
        first, second = conv_channels
        self.conv1 = nn.Conv2d(in_channels, first, kernel_size)
        self.conv2 = nn.Conv2d(first, second, kernel_size)
        with torch.no_grad():
            features = self.features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The conv stack, flattened: [N, C, H, W] -> [N, fc1.in_features]."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(self.features(x)))
        return self.fc2(x)

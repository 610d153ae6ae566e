"""A network that only follows the contract (src/mnistlab/models/contract.py): nothing in mnistlab names its layers."""

from torch import nn


class ToyNet(nn.Module):
    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10, width: int = 6):
        super().__init__()
        self.num_classes, self.input_shape = num_classes, (in_channels, image_size, image_size)
        self.backbone = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        side = image_size // 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * side * side, 24), nn.ReLU(),
                                  nn.Linear(24, num_classes))

    def pre_logits(self, x):
        return self.head[:-1](self.backbone(x))

    def forward(self, x):
        return self.head(self.backbone(x))

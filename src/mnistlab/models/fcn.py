"""A fully convolutional network for semantic segmentation (He et al., section 6: a classification network
becomes an FCN's backbone), following the network contract of models/contract.py.

The backbone is a classification network's (`backbone`: its model config, e.g. the seed network or the ResNet),
its convolutions padded so that each feature map stays aligned with the image: the weights are the same, so a
trained classifier's backbone transfers (tricks.init_from). The head sees enough context to name a whole digit:
two 3x3 convolutions dilated by 2 over the backbone's 1/4-resolution maps (a 64x64 canvas: 16x16 maps) reach
about 9 cells, 36 pixels, on top of the backbone's own receptive field. A 1x1 convolution gives each cell's class
scores, upsampled bilinearly to the input size.
"""

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.models.registry import build_network


def same_padding(backbone: nn.Module) -> None:
    """Pad every convolution of `backbone` so that it keeps its input's size (before any stride)."""
    for conv in backbone.modules():
        if isinstance(conv, nn.Conv2d):
            conv.padding = tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation, strict=True))


class FCN(nn.Module):
    """Every setting is given: configs/model/fcn.yaml states them (build_network fills what a config leaves out, and
    builds the backbone, whose config may name the network alone)."""

    def __init__(self, *, backbone: dict | nn.Module, num_classes: int, in_channels: int, image_size: int,
                 head_channels: int, head_dilation: int):
        super().__init__()
        classifier = backbone if isinstance(backbone, nn.Module) else build_network(backbone, "model.backbone")
        self.backbone = classifier.backbone
        same_padding(self.backbone)
        if hasattr(classifier, "feature_layers"):  # else the views show every convolution of the backbone
            self.feature_layers = classifier.feature_layers
        self.input_shape, self.num_classes = (in_channels, image_size, image_size), num_classes
        with torch.no_grad():
            channels = self.backbone.eval()(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.backbone.train()
        d = head_dilation
        self.head = nn.Sequential(
            nn.Conv2d(channels, head_channels, 3, padding=d, dilation=d, bias=False), nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(head_channels, head_channels, 3, padding=d, dilation=d, bias=False),
            nn.BatchNorm2d(head_channels), nn.ReLU(inplace=True),
            nn.Conv2d(head_channels, num_classes, 1))

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolution's input, averaged over the image: [N, head_channels]."""
        return self.head[:-1](self.backbone(x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] images -> [N, num_classes, H, W] class scores per pixel."""
        return F.interpolate(self.head(self.backbone(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)

"""A ResNet sized for 28x28 images, with the tweaks of He et al., "Bag of Tricks" (arXiv 1812.01187) as switches.

CIFAR-style, as small images want: a 3x3 stem at full resolution (ImageNet's 7x7 stride-2 stem and max-pool would
shrink 28x28 to 7x7 before the first block), three stages at strides 1, 2, 2 (28 -> 28 -> 14 -> 7), global average
pooling and one Linear. Basic blocks (two 3x3) or bottleneck blocks (1x1 -> 3x3 -> 1x1, four times wider out).
It follows the network contract of models/contract.py; its stages are `feature_layers`, what the views show.

The tweaks (the paper's figure 2), each changing one thing:
- stride_on_3x3 (ResNet-B): a downsampling bottleneck block strides on its 3x3 convolution, not its first 1x1,
  which would otherwise skip three quarters of its input. Basic blocks stride on their 3x3 already.
- deep_stem (ResNet-C): the stem is three 3x3 convolutions (widths w/2, w/2, w) instead of one. The paper trades a
  7x7 convolution for them at the same receptive field; here it deepens a one-conv stem to a 7x7 receptive field,
  at full resolution, where each convolution costs the most.
- avg_down (ResNet-D): a downsampling shortcut average-pools 2x2, then convolves 1x1 at stride 1, instead of a
  stride-2 1x1 convolution that drops three quarters of its input.
- zero_gamma (section 3.1): the last BatchNorm of each residual branch starts with gamma = 0, so every block
  starts as its shortcut: the network starts shallower and trains like one at first.
"""

from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

from mnistlab.errors import ConfigError

BLOCKS = ("basic", "bottleneck")
STAGE_STRIDES = (1, 2, 2)


def conv_bn(channels_in: int, channels_out: int, kernel_size: int, stride: int = 1) -> list[tuple[str, nn.Module]]:
    return [("conv", nn.Conv2d(channels_in, channels_out, kernel_size, stride, kernel_size // 2, bias=False)),
            ("bn", nn.BatchNorm2d(channels_out))]


def shortcut(channels_in: int, channels_out: int, stride: int, avg_down: bool) -> nn.Module:
    """The identity, or a projection where the block changes the shape: a stride-S 1x1 convolution, or with
    avg_down (ResNet-D) an SxS average pool and a stride-1 1x1 convolution."""
    if stride == 1 and channels_in == channels_out:
        return nn.Identity()
    if avg_down and stride > 1:
        pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
        return nn.Sequential(OrderedDict([("pool", pool), *conv_bn(channels_in, channels_out, 1)]))
    return nn.Sequential(OrderedDict(conv_bn(channels_in, channels_out, 1, stride)))


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), both convolutions 3x3, the first one strided."""

    expansion = 1

    def __init__(self, channels_in: int, width: int, stride: int, stride_on_3x3: bool, avg_down: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut(channels_in, width, stride, avg_down)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 (width) -> 3x3 (width) -> 1x1 (4 x width), each followed by BatchNorm, plus the shortcut. The stride
    sits on the first 1x1 (the original ResNet) or, with stride_on_3x3, on the 3x3 (ResNet-B)."""

    expansion = 4

    def __init__(self, channels_in: int, width: int, stride: int, stride_on_3x3: bool, avg_down: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, width, 1, 1 if stride_on_3x3 else stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride if stride_on_3x3 else 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut(channels_in, width * self.expansion, stride, avg_down)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """backbone: stem, stage1, stage2, stage3; head: global average pool, flatten, dropout, fc. Every setting is
    given: configs/model/resnet.yaml states them (build_network fills what a config leaves out)."""

    feature_layers = ("backbone.stem", "backbone.stage1", "backbone.stage2", "backbone.stage3")

    def __init__(self, *, in_channels: int, image_size: int, num_classes: int, widths: tuple[int, int, int],
                 blocks: tuple[int, int, int], block: Literal["basic", "bottleneck"], stride_on_3x3: bool,
                 deep_stem: bool, avg_down: bool, zero_gamma: bool, dropout: float):
        super().__init__()
        if block not in BLOCKS:
            raise ConfigError(f"model.block={block!r} must be one of {', '.join(BLOCKS)}")
        if len(widths) != len(STAGE_STRIDES) or len(blocks) != len(STAGE_STRIDES):
            raise ConfigError(f"model.widths={list(widths)} and model.blocks={list(blocks)} need one entry per stage "
                              f"({len(STAGE_STRIDES)})")
        if stride_on_3x3 and block == "basic":
            raise ConfigError("model.stride_on_3x3=true (ResNet-B) moves a bottleneck block's stride to its 3x3: "
                              "basic blocks have it there already; use it with model.block=bottleneck")
        if min(widths) < 2 or min(blocks) < 1:
            raise ConfigError(f"model.widths={list(widths)} must be >= 2 and model.blocks={list(blocks)} >= 1")
        self.input_shape = (in_channels, image_size, image_size)
        self.num_classes = num_classes
        kind = BasicBlock if block == "basic" else Bottleneck
        stem_width = widths[0]
        if deep_stem:
            half = stem_width // 2
            layers = [(f"{name}{i}", layer) for i, (a, b) in enumerate(
                [(in_channels, half), (half, half), (half, stem_width)], 1)
                for name, layer in [*conv_bn(a, b, 3), ("relu", nn.ReLU(inplace=True))]]
        else:
            layers = [*conv_bn(in_channels, stem_width, 3), ("relu", nn.ReLU(inplace=True))]
        stages, channels = [("stem", nn.Sequential(OrderedDict(layers)))], stem_width
        for index, (width, count, stride) in enumerate(zip(widths, blocks, STAGE_STRIDES, strict=True), 1):
            stage = []
            for i in range(count):
                stage.append(kind(channels, width, stride if i == 0 else 1, stride_on_3x3, avg_down))
                channels = width * kind.expansion
            stages.append((f"stage{index}", nn.Sequential(*stage)))
        self.backbone = nn.Sequential(OrderedDict(stages))
        self.head = nn.Sequential(OrderedDict([
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("dropout", nn.Dropout(dropout) if dropout else nn.Identity()),
            ("fc", nn.Linear(channels, num_classes)),
        ]))
        self._initialise(zero_gamma)

    def _initialise(self, zero_gamma: bool) -> None:
        """He initialisation for the convolutions (fan-out, as torchvision's ResNet); gamma 1 and beta 0, or with
        zero_gamma a gamma of 0 in each block's last BatchNorm."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_gamma:
            for module in self.modules():
                if isinstance(module, BasicBlock | Bottleneck):
                    nn.init.zeros_(module.last_bn.weight)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """fc's input: the globally pooled features of the last stage, [N, channels]."""
        return self.head[:-1](self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

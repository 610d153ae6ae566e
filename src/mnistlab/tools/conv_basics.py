"""The seed document's convolution demos, run for real: conv1d sizes, a 3x3 edge kernel over a digit (saved
as a PNG), convolution versus correlation, stride 2 versus stride 1 + max-pool, dilation's receptive field,
and the parameter count of Conv2d versus Linear.

    python scripts/conv_basics.py --data-root ../shared/datasets/mnist --out figures/
"""

import argparse
import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.data.files import SPLIT_FILES, find_idx_files
from mnistlab.data.idx import read_idx
from mnistlab.errors import DataError

# Rows of +1, 0, -1: bright above dark gives a strong response, i.e. horizontal edges.
HORIZONTAL_EDGE = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])


def values(t: torch.Tensor) -> list[float]:
    return [round(v, 4) for v in t.flatten().tolist()]


def conv1d_demo() -> None:
    inputs = torch.randn(2, 1, 2)  # batch 2, 1 input channel, width 2
    filters = torch.randn(1, 1, 2)  # 1 output channel, 1 input channel, kernel width 2
    result = F.conv1d(inputs, filters, padding=0)
    print("## conv1d: inputs [batch, in, iW], filters [out, in, kW]")
    print(f"inputs  {list(inputs.shape)}: {values(inputs)}")
    print(f"filters {list(filters.shape)}: {values(filters)}")
    print(f"output  {list(result.shape)} (width iW - kW + 1 = 2 - 2 + 1 = 1): {values(result)}")
    print(f"by hand: inputs . filters for each sample = {values((inputs * filters).sum(-1))}\n")


def first_digit(root: Path, index: int) -> torch.Tensor:
    """Image `index` of the MNIST-style images under `root` (the test file, else the training file), [28, 28]."""
    for split in ("test", "train"):
        files = find_idx_files(root, "mnist", [SPLIT_FILES[split][0]])
        if files:
            images = read_idx(next(iter(files.values())))
            if not 0 <= index < len(images):
                raise DataError(f"--index {index}: {next(iter(files.values()))} holds {len(images)} images")
            return images[index].float() / 255
    raise DataError(f"no MNIST-style images in {root}: expected {SPLIT_FILES['test'][0]} or "
                    f"{SPLIT_FILES['train'][0]} (plain or .gz); point --data-root at such a folder")


def edge_demo(digit: torch.Tensor, out: Path) -> Path:
    image = digit[None, None]  # [28, 28] -> [batch 1, channel 1, 28, 28]
    kernel = HORIZONTAL_EDGE[None, None]  # [out 1, in 1, 3, 3]
    result = F.conv2d(image, kernel, padding=1)
    print("## conv2d: a horizontal-edge kernel over a digit")
    print(f"image {list(image.shape)}, kernel {list(kernel.shape)} (sums to {float(kernel.sum()):g}), "
          f"padding=1 -> output {list(result.shape)}")
    print(f"output range [{float(result.min()):.2f}, {float(result.max()):.2f}]: positive (red) where bright lies "
          "above dark, a stroke's lower edge; negative (blue) at its upper edge")
    figure, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    axes[0].imshow(image[0, 0], cmap="gray")
    axes[0].set_title(f"input {list(image.shape)}")
    limit = float(result.abs().max())
    axes[1].imshow(result[0, 0], cmap="coolwarm", vmin=-limit, vmax=limit)
    axes[1].set_title("horizontal-edge response")
    for axis in axes:
        axis.axis("off")
    figure.tight_layout()
    path = out / "conv2d_edge.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"saved {path}\n")
    return path


def true_convolution(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Textbook convolution (the kernel flipped as it slides), written out as a sum over kernel offsets."""
    kh, kw = kernel.shape
    height, width = image.shape[0] - kh + 1, image.shape[1] - kw + 1
    result = torch.zeros(height, width)
    for i in range(kh):
        for j in range(kw):
            result += kernel[kh - 1 - i, kw - 1 - j] * image[i : i + height, j : j + width]
    return result


def correlation_demo() -> None:
    image, kernel = torch.randn(6, 6), torch.randn(3, 3)
    by_definition = true_convolution(image, kernel)
    torch_conv = F.conv2d(image[None, None], kernel[None, None])[0, 0]
    flipped = F.conv2d(image[None, None], kernel.flip(0, 1)[None, None])[0, 0]
    print("## F.conv2d is cross-correlation: it does not flip the kernel")
    print(f"max |F.conv2d(x, k) - convolution(x, k)|         = {float((torch_conv - by_definition).abs().max()):.4f}")
    print(f"max |F.conv2d(x, flip(k)) - convolution(x, k)|   = {float((flipped - by_definition).abs().max()):.1e}\n")


def stride_demo() -> None:
    tt, kk = torch.randn(1, 1, 6, 6), torch.randn(1, 1, 3, 3)
    strided = F.conv2d(tt, kk, stride=2)
    pooled = F.max_pool2d(F.conv2d(tt, kk, stride=1), 2)
    print("## stride-2 convolution versus stride-1 convolution + max_pool2d(2), on a 6x6 input and 3x3 kernel")
    print(f"stride 2:        shape {list(strided.shape)}, values {values(strided)}")
    print(f"stride 1 + pool: shape {list(pooled.shape)}, values {values(pooled)}")
    print(f"same shape: {strided.shape == pooled.shape}; same values: {torch.allclose(strided, pooled)}\n")


def receptive_field(kernel_size: int, dilation: int) -> torch.Tensor:
    """Which input pixels one output pixel of a dilated conv sees: the nonzero gradient of that output."""
    size = dilation * (kernel_size - 1) + 1
    image = torch.zeros(1, 1, size, size, requires_grad=True)
    F.conv2d(image, torch.ones(1, 1, kernel_size, kernel_size), dilation=dilation).sum().backward()
    return image.grad[0, 0] != 0


def dilation_demo() -> None:
    print("## dilation: a 3x3 kernel with dilation d sees a (d * (3 - 1) + 1)-wide window, with holes")
    for dilation in (1, 2):
        seen = receptive_field(3, dilation)
        print(f"dilation {dilation}: {seen.shape[0]}x{seen.shape[1]} window, {int(seen.sum())} pixels used")
        for row in seen:
            print("   " + " ".join("#" if v else "." for v in row.tolist()))
    print()


def parameters_demo() -> None:
    conv, linear = nn.Conv2d(5, 10, 2, 2), nn.Linear(5, 10)
    print("## parameters: Conv2d(5, 10, 2, 2) versus Linear(5, 10)")
    for name, layer in (("Conv2d(5, 10, kernel 2, stride 2)", conv), ("Linear(5, 10)", linear)):
        sizes = ", ".join(f"{list(p.shape)} = {p.numel()}" for p in layer.parameters())
        print(f"{name}: {sizes}; total {sum(p.numel() for p in layer.parameters())}")
    print("the conv's 10 x 5 x 2 x 2 weights are its filters, shared over every position of any image size")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("MNISTLAB_DATA", "data")),
                        help="a folder with MNIST-style IDX files (default: $MNISTLAB_DATA or data)")
    parser.add_argument("--index", type=int, default=0, help="which image to run the edge kernel over")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="folder for the PNG")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random demo tensors")
    args = parser.parse_args(argv)
    try:
        digit = first_digit(args.data_root, args.index)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    conv1d_demo()
    edge_demo(digit, args.out)
    correlation_demo()
    stride_demo()
    dilation_demo()
    parameters_demo()

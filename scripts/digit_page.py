"""A page of handwritten digits to try mnistlab-predict's segmentation on without a camera: digits from an IDX
file laid out in lines, enlarged, dark ink on light paper with its grain, slightly blurred, as a photo or scan
of a written page would be. Prints the digits it placed, line by line.

    python scripts/digit_page.py data/mnist8k/t10k-images-idx3-ubyte.gz data/mnist8k/t10k-labels-idx1-ubyte.gz \\
        page.png --lines 2 --per-line 5 --zoom 4
    mnistlab-predict ckpt_path=CKPT images=[page.png]
"""

import argparse

import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from mnistlab.data.idx import read_idx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", help="IDX images file (plain or .gz)")
    parser.add_argument("labels", help="IDX labels file (plain or .gz)")
    parser.add_argument("output", help="the page, e.g. page.png")
    parser.add_argument("--lines", type=int, default=2, help="lines of digits (default: 2)")
    parser.add_argument("--per-line", type=int, default=5, help="digits per line (default: 5)")
    parser.add_argument("--zoom", type=int, default=4, help="enlargement of the 28x28 digits (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="which digits: a seeded draw (default: 0)")
    args = parser.parse_args()
    for name in ("lines", "per_line", "zoom"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    images, labels = read_idx(args.images), read_idx(args.labels)
    count = args.lines * args.per_line
    if len(images) < count:
        parser.error(f"{args.images} holds {len(images)} images: fewer than the {count} the page needs")
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[:count]
    size, gap = images.shape[-1], images.shape[-1] // 3
    page = torch.zeros(args.lines * (size + gap) + gap, args.per_line * (size + gap) + gap)
    for n, index in enumerate(chosen.tolist()):
        row, col = divmod(n, args.per_line)
        top, left = gap + row * (size + gap), gap + col * (size + gap)
        page[top : top + size, left : left + size] = images[index].float()
    ink = F.interpolate(page[None, None], scale_factor=args.zoom, mode="bicubic")[0, 0].clamp(0, 255)
    paper = 235 - 0.8 * ink + 6 * torch.randn(ink.shape, generator=torch.Generator().manual_seed(args.seed))
    Image.fromarray(paper.clamp(0, 255).byte().numpy()).filter(ImageFilter.GaussianBlur(1.5)).save(args.output)
    for row in range(args.lines):
        print(" ".join(str(int(labels[i])) for i in chosen[row * args.per_line : (row + 1) * args.per_line]))


if __name__ == "__main__":
    main()

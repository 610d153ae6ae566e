"""Re-split one pair of IDX files (images, labels) into a training and a test split: the first N images train,
the rest test. Real digits to train on when only MNIST's official test files are at hand:

    python scripts/resplit_idx.py ../shared/datasets/mnist/t10k-images-idx3-ubyte.gz \\
        ../shared/datasets/mnist/t10k-labels-idx1-ubyte.gz data/mnist8k --train 8000
    python train.py data.root=data/mnist8k data.val_size=1000

MNIST's official test files hold the cleaner digits first and the harder ones last (its own notes), so the split
is taken after a seeded shuffle: both parts hold both kinds.
"""

import argparse

import torch

from mnistlab.data.idx import read_idx, write_idx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", help="IDX images file (plain or .gz)")
    parser.add_argument("labels", help="IDX labels file (plain or .gz)")
    parser.add_argument("folder", help="where to write the four MNIST-named IDX files (created if missing)")
    parser.add_argument("--train", type=int, required=True, help="images in the training split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle before the split")
    args = parser.parse_args()
    images, labels = read_idx(args.images), read_idx(args.labels)
    if len(images) != len(labels):
        parser.error(f"{args.images} holds {len(images)} images but {args.labels} holds {len(labels)} labels")
    if not 0 < args.train < len(images):
        parser.error(f"--train={args.train} must be between 1 and {len(images) - 1}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    images, labels = images[order], labels[order]
    for prefix, part in (("train", slice(None, args.train)), ("t10k", slice(args.train, None))):
        write_idx(f"{args.folder}/{prefix}-images-idx3-ubyte.gz", images[part])
        write_idx(f"{args.folder}/{prefix}-labels-idx1-ubyte.gz", labels[part])
    print(f"wrote {args.train} training and {len(images) - args.train} test images to {args.folder}")


if __name__ == "__main__":
    main()

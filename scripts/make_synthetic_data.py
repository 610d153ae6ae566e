"""Write a small, learnable MNIST look-alike (four IDX files) to a folder, for trying mnistlab offline.

    python scripts/make_synthetic_data.py data/synthetic
    python train.py data.root=data/synthetic data.val_size=500 trainer.max_epochs=2
"""

import argparse

from mnistlab.data.synthetic import write_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="where to write the four IDX files (created if missing)")
    parser.add_argument("--train", type=int, default=6000, help="training images (default 6000)")
    parser.add_argument("--test", type=int, default=1000, help="test images (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plain", action="store_true", help="write uncompressed files instead of .gz")
    args = parser.parse_args()
    root = write_synthetic_dataset(args.folder, args.train, args.test, args.seed, gzipped=not args.plain)
    print(f"wrote {args.train} training and {args.test} test images to {root}")


if __name__ == "__main__":
    main()

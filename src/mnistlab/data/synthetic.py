"""A small, learnable MNIST look-alike in IDX files, for trying the pipeline offline and for tests."""

from pathlib import Path

import numpy as np

from mnistlab.data.idx import write_idx

IMAGE_SIZE = 28
NUM_CLASSES = 10


def synthetic_split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class k is a bright 8x8 block at the k-th cell of a 4x3 grid, jittered by up to 2 pixels, over noise."""
    labels = rng.integers(0, NUM_CLASSES, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, IMAGE_SIZE, IMAGE_SIZE)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        top = 2 + row * 9 + rng.integers(-2, 3)
        left = 1 + col * 7 + rng.integers(-1, 2)
        top, left = np.clip([top, left], 0, IMAGE_SIZE - 8)
        images[i, top : top + 8, left : left + 8] = rng.integers(180, 256, size=(8, 8))
    return images, labels


def write_synthetic_dataset(root: str | Path, n_train: int = 2000, n_test: int = 500, seed: int = 0,
                            gzipped: bool = True) -> Path:
    """Write the four IDX files (MNIST's names) into `root`; returns `root`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gzipped else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = synthetic_split(n, rng)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return root

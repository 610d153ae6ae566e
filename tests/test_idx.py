import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from mnistlab.data.files import BUNDLED
from mnistlab.data.idx import read_idx, write_idx
from mnistlab.data.synthetic import write_synthetic_dataset
from mnistlab.errors import DataError

OFFICIAL_MNIST = BUNDLED  # MNIST's official test files, as bundled with mnistlab (src/mnistlab/bundled/README.md)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_write_then_read_round_trips(tmp_path, name):
    array = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    loaded = read_idx(path)
    assert loaded.dtype == torch.uint8 and tuple(loaded.shape) == (7, 28, 28)
    assert torch.equal(loaded, torch.from_numpy(array))


def test_reader_agrees_with_torchvision_on_the_same_files(tmp_path):
    """torchvision's own MNIST class reads the uncompressed files of its layout: both must see the same data."""
    raw = write_synthetic_dataset(tmp_path / "MNIST" / "raw", n_train=50, n_test=20, gzipped=False)
    for train, prefix in ((True, "train"), (False, "t10k")):
        reference = datasets.MNIST(str(tmp_path), train=train, download=False)
        assert torch.equal(read_idx(raw / f"{prefix}-images-idx3-ubyte"), reference.data)
        assert torch.equal(read_idx(raw / f"{prefix}-labels-idx1-ubyte").long(), reference.targets)


def test_reads_the_official_mnist_test_files(tmp_path):
    sums = dict(line.split()[::-1] for line in (OFFICIAL_MNIST / "MD5SUMS").read_text().splitlines() if line)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert hashlib.md5((OFFICIAL_MNIST / name).read_bytes()).hexdigest() == sums[name]
    images = read_idx(OFFICIAL_MNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(OFFICIAL_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert tuple(images.shape) == (10000, 28, 28) and tuple(labels.shape) == (10000,)
    # Class counts of the official MNIST test set, as published with it.
    assert torch.bincount(labels.long()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # And torchvision reads the decompressed files identically (it insists on training files: give it some).
    raw = write_synthetic_dataset(tmp_path / "MNIST" / "raw", n_train=10, n_test=1, gzipped=False)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(OFFICIAL_MNIST / f"{name}.gz") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    reference = datasets.MNIST(str(tmp_path), train=False, download=False)
    assert torch.equal(images, reference.data) and torch.equal(labels.long(), reference.targets)


def corrupt(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "bad magic":
        path.write_bytes(b"\x12\x34" + data[2:])
    elif kind == "truncated":
        path.write_bytes(data[:-100])
    elif kind == "trailing bytes":
        path.write_bytes(data + b"\x00" * 3)
    elif kind == "short header":
        path.write_bytes(data[:9])
    elif kind == "element type":
        path.write_bytes(data[:2] + b"\x0d" + data[3:])
    elif kind == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize(("kind", "says"), [
    ("bad magic", "bad magic number 1234"),
    ("truncated", "is truncated"),
    ("trailing bytes", "longer than its header says"),
    ("short header", "shorter than its 16-byte header"),
    ("element type", "element type 0x0d is not supported"),
    ("empty", "bad magic number (empty)"),
])
def test_corrupt_files_raise_one_line_naming_the_file(tmp_path, kind, says):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 28, 28), dtype=np.uint8))
    corrupt(path, kind)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and says in message and "\n" not in message


def test_corrupt_gzip_names_the_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde")[:-6])
    with pytest.raises(DataError, match=r"cannot read .*t10k-labels-idx1-ubyte\.gz"):
        read_idx(path)

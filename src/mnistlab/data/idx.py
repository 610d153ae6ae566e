"""The IDX format of MNIST-style datasets (plain or gzipped): read with validation, and write."""

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from mnistlab.errors import DataError

UBYTE = 0x08  # the only IDX element type MNIST-style datasets use
MAX_DIMS = 4  # labels have 1, images 3; a header claiming more is not an MNIST-style file
# Image data compresses about 3-8 times with gzip; zeros, about 1000 times. A file claiming far more than its
# compressed size can hold is refused before its claim is allocated.
MAX_GZIP_RATIO = 200


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file into a uint8 tensor shaped as its header says. The size the header claims is checked
    against the file (a gzip file's stored length) before memory is allocated; any inconsistency, and any
    unreadable, corrupt or non-regular file, is one DataError line."""
    path = Path(path)
    try:
        if not path.is_file():
            raise DataError(f"{path} is not a regular file (a folder, a pipe or a device): IDX files are read whole")
        with open(path, "rb") as stored:
            gzipped = stored.read(2) == b"\x1f\x8b"
            if gzipped:
                stored.seek(-4, 2)
                payload = int.from_bytes(stored.read(4), "little")  # gzip's ISIZE: the length mod 2**32
        compressed = path.stat().st_size
        with (gzip.open if gzipped else open)(path, "rb") as file:
            shape, header = read_header(path, file)
            expected = header + math.prod(shape)
            if gzipped and expected > MAX_GZIP_RATIO * compressed:
                raise DataError(f"{path} claims {expected:,} bytes for shape {shape} from {compressed:,} compressed: "
                                f"more than {MAX_GZIP_RATIO} times its size, beyond any image data; not read")
            if gzipped and payload != expected % 2**32:
                raise DataError(f"cannot read {path}: a truncated or corrupt gzip file (it stores {payload:,} bytes, "
                                f"its IDX header claims {expected:,} for shape {shape})")
            if not gzipped and compressed != expected:
                problem = "truncated" if compressed < expected else "longer than its header says"
                raise DataError(f"{path} is {problem}: {compressed} bytes, expected {expected} for shape {shape}")
            data = np.empty(math.prod(shape), dtype=np.uint8)
            read = file.readinto(memoryview(data))
            if read != data.size or file.read(1):
                raise DataError(f"{path} is truncated or corrupt: its data does not match its shape {shape}")
    except (OSError, EOFError, zlib.error) as err:  # unreadable, corrupt gzip (BadGzipFile is an OSError)
        raise DataError(f"cannot read {path}: {err.strerror or err if isinstance(err, OSError) else err}") from None
    return torch.from_numpy(data.reshape(shape))


def read_header(path: Path, file) -> tuple[tuple[int, ...], int]:
    """(shape, header length) of an open IDX file, checked."""
    magic = file.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise DataError(f"{path} is not an IDX file: bad magic number {magic.hex() or '(empty)'}")
    if magic[2] != UBYTE:
        raise DataError(f"{path}: IDX element type 0x{magic[2]:02x} is not supported (only unsigned bytes, 0x08)")
    ndim = magic[3]
    if not 1 <= ndim <= MAX_DIMS:
        raise DataError(f"{path}: its IDX header claims {ndim} dimensions; MNIST-style files have 1 (labels) or "
                        "3 (images)")
    dims = file.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path} is truncated: shorter than its {4 + 4 * ndim}-byte header")
    return tuple(int(d) for d in np.frombuffer(dims, dtype=">u4")), 4 + 4 * ndim


def write_idx(path: str | Path, array: np.ndarray | torch.Tensor) -> Path:
    """Write a uint8 array as an IDX file, gzipped when the name ends in .gz."""
    path = Path(path)
    array = np.ascontiguousarray(np.asarray(array), dtype=np.uint8)
    header = bytes([0, 0, UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path

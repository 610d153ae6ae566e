"""The IDX format of MNIST-style datasets (plain or gzipped): read with validation, and write."""

import gzip
import math
from pathlib import Path

import numpy as np
import torch

from mnistlab.errors import DataError

UBYTE = 0x08  # the only IDX element type MNIST-style datasets use


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file into a uint8 tensor shaped as its header says; any inconsistency is a DataError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file: bad magic number {raw[:4].hex() or '(empty)'}")
    if raw[2] != UBYTE:
        raise DataError(f"{path}: IDX element type 0x{raw[2]:02x} is not supported (only unsigned bytes, 0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than its {header}-byte header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path} is {problem}: {len(raw)} bytes, expected {expected} for shape {shape}")
    data = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
    return torch.from_numpy(data.copy())


def write_idx(path: str | Path, array: np.ndarray | torch.Tensor) -> Path:
    """Write a uint8 array as an IDX file, gzipped when the name ends in .gz."""
    path = Path(path)
    array = np.ascontiguousarray(np.asarray(array), dtype=np.uint8)
    header = bytes([0, 0, UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path

"""Reader for the IDX format of the MNIST files (LeCun et al.): a magic number, the dimensions, raw bytes."""

from __future__ import annotations

import math
import struct

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, what: str = "IDX file") -> np.ndarray:
    """Parse decompressed IDX bytes into an array (native byte order); ValueError naming ``what`` if bad."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{what} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype = np.dtype(_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{what} is truncated in its header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{what} has {len(data)} bytes, its header {shape} says {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("=")) if dtype.byteorder == ">" else array  # as torch needs

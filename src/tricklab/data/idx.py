"""Reader for the IDX format of the MNIST files (LeCun et al.): a magic number, the dimensions, raw bytes.

The header alone gives the exact size of the file (:func:`idx_size`), so a download or a cached file can be
refused as soon as its content runs past it, before the rest is decompressed.
"""

from __future__ import annotations

import math
import struct

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _check_magic(data: bytes, what: str) -> None:
    if data[:1] not in (b"", b"\0") or data[1:2] not in (b"", b"\0") or (len(data) > 2 and data[2] not in _DTYPES):
        raise ValueError(f"{what} is not an IDX file (bad magic number {data[:4].hex()})")


def idx_size(head: bytes, what: str = "its content") -> int | None:
    """The exact size in bytes of the IDX file that begins with ``head``: header plus ∏ dims × item size.

    None while ``head`` is too short to hold the whole header; ValueError if it is not an IDX header.
    """
    _check_magic(head, what)
    if len(head) < 4:
        return None
    header = 4 + 4 * head[3]
    if len(head) < header:
        return None
    shape = struct.unpack(f">{head[3]}I", head[4:header])
    return header + math.prod(shape) * np.dtype(_DTYPES[head[2]]).itemsize


def parse_idx(data: bytes, what: str = "IDX file") -> np.ndarray:
    """Parse decompressed IDX bytes into an array (native byte order); ValueError naming ``what`` if bad."""
    if len(data) < 4:
        raise ValueError(f"{what} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    expected = idx_size(data, what)
    if expected is None:
        raise ValueError(f"{what} is truncated in its header")
    dtype = np.dtype(_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) != expected:
        raise ValueError(f"{what} has {len(data)} bytes, its header {shape} says {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("=")) if dtype.byteorder == ">" else array  # as torch needs

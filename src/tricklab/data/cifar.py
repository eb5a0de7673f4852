"""CIFAR-10 (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images") from its binary archive.

The authors' ``cifar-10-binary.tar.gz`` (never the pickled Python version) is downloaded once, verified by
the MD5 they publish, and cached as it is in ``<root>/cifar10/``. Its members are read in memory, never
extracted to disk (so no member name can reach outside the cache), and every member's size is checked
before it is read, so a damaged archive cannot make the reader decompress without bound.

Each of ``data_batch_1.bin`` … ``data_batch_5.bin`` (training) and ``test_batch.bin`` holds 10,000 records
of 3,073 bytes: the label (0..9), then the 32×32 red, green and blue planes, row by row (CHW order).

Example::

    raw = DATASETS.get("cifar10")(data_root())
    raw.train.x.shape, raw.train.x.dtype    # (50000, 3, 32, 32), torch.uint8
"""

from __future__ import annotations

import io
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from tricklab.data.base import DatasetInfo, RawDataset, TensorData
from tricklab.data.download import RemoteFile, fetch, mirrors_for
from tricklab.data.registry import DATASETS
from tricklab.errors import DataError

CIFAR_FILE = RemoteFile("cifar-10-binary.tar.gz", md5="c32a1d4ab5d03f1284b67883e8d87530", decompress=False)
CIFAR_MIRRORS = ("https://www.cs.toronto.edu/~kriz",)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32  # one label byte, then the three colour planes
CIFAR_RECORDS = 10_000  # records in each batch file
TRAIN_MEMBERS = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_MEMBER = "test_batch.bin"
MAX_MEMBERS = 64  # the real archive has 9 (a folder, 6 batches, batches.meta.txt, readme.html)


def read_members(archive: bytes, names: tuple[str, ...], size: int, where: str) -> dict[str, bytes]:
    """The bytes of the regular-file members ``names`` (matched by base name) of a .tar.gz held in memory.

    Every member must be at most ``size`` bytes and the wanted ones exactly ``size``, checked from the
    member's header before its data is read: at most ``MAX_MEMBERS`` × ``size`` bytes are ever decompressed.
    """
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for _ in range(MAX_MEMBERS):
                member = tar.next()
                if member is None:
                    break
                base = member.name.rstrip("/").rsplit("/", 1)[-1]
                wanted = base in names and member.isfile()
                if wanted and member.size != size:
                    raise DataError(
                        f"cifar10: {where}: member {member.name} has {member.size} bytes, expected {size} "
                        f"({size // RECORD_BYTES} records of {RECORD_BYTES})"
                    )
                if member.size > size:
                    raise DataError(
                        f"cifar10: {where}: member {member.name} has {member.size} bytes, more than a batch file's "
                        f"{size}: not the CIFAR-10 archive"
                    )
                if not wanted:
                    continue
                if base in found:
                    raise DataError(f"cifar10: {where}: member {base} appears twice in the archive")
                data = tar.extractfile(member).read(size)
                if len(data) != size:
                    raise DataError(
                        f"cifar10: {where}: member {member.name} is truncated ({len(data)} of {size} bytes)"
                    )
                found[base] = data
                if len(found) == len(names):
                    break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"cifar10: {where} is not a readable .tar.gz archive ({e}); delete it to download it again"
        ) from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"cifar10: {where}: the archive lacks {', '.join(missing)}")
    return found


def parse_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file's records."""
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    y = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(y >= len(CIFAR_CLASSES))
    if len(bad):
        raise DataError(
            f"cifar10: {where}: record {bad[0]} has label {y[bad[0]]}, expected 0..{len(CIFAR_CLASSES) - 1}"
        )
    return records[:, 1:].reshape(-1, *IMAGE_SHAPE), y


@DATASETS.register("cifar10", help="60k 32×32 colour images in 10 classes; Krizhevsky 2009 (downloaded, md5-verified)")
def cifar10(root: Path) -> RawDataset:
    folder = root / "cifar10"
    archive = fetch(folder, CIFAR_FILE, mirrors_for(CIFAR_MIRRORS), "cifar10")
    where = str(folder / CIFAR_FILE.name)
    members = read_members(archive, (*TRAIN_MEMBERS, TEST_MEMBER), CIFAR_RECORDS * RECORD_BYTES, where)
    del archive
    train = [parse_batch(members.pop(n), f"{where}:{n}") for n in TRAIN_MEMBERS]
    xte, yte = parse_batch(members.pop(TEST_MEMBER), f"{where}:{TEST_MEMBER}")
    xtr, ytr = np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])
    info = DatasetInfo("cifar10", IMAGE_SHAPE, len(CIFAR_CLASSES), CIFAR_CLASSES)
    return RawDataset(
        TensorData(torch.from_numpy(xtr), torch.from_numpy(ytr)),
        TensorData(torch.from_numpy(xte.copy()), torch.from_numpy(yte)),
        info,
    )

"""The built-in datasets MNIST, Fashion-MNIST, MNIST-1D and a synthetic one, registered by name in
:data:`~tricklab.data.registry.DATASETS`: each returns the official train/test sets, unscaled."""

from __future__ import annotations

import io
import random
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from tricklab.data.base import DatasetInfo, RawDataset, TensorData
from tricklab.data.download import RemoteFile, fetch, mirrors_for
from tricklab.data.idx import idx_size, parse_idx
from tricklab.data.registry import DATASETS
from tricklab.errors import DataError
from tricklab.outputs import atomic_write

# Exact content sizes (the same for Fashion-MNIST): a file that inflates past them is refused as it inflates.
IDX_SIZES = {
    "train-images-idx3-ubyte.gz": 16 + 60_000 * 28 * 28,
    "train-labels-idx1-ubyte.gz": 8 + 60_000,
    "t10k-images-idx3-ubyte.gz": 16 + 10_000 * 28 * 28,
    "t10k-labels-idx1-ubyte.gz": 8 + 10_000,
}


def _idx_file(name: str, **check: str) -> RemoteFile:
    return RemoteFile(name, size=IDX_SIZES[name], header_size=idx_size, **check)


MNIST_FILES = (
    _idx_file("train-images-idx3-ubyte.gz", sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    _idx_file("train-labels-idx1-ubyte.gz", sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    _idx_file("t10k-images-idx3-ubyte.gz", sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    _idx_file("t10k-labels-idx1-ubyte.gz", sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
)
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist",
    "https://storage.googleapis.com/cvdf-datasets/mnist",
    "http://yann.lecun.com/exdb/mnist",
)
# Zalando publishes the MD5 of the compressed files (github.com/zalandoresearch/fashion-mnist).
FASHION_FILES = (
    _idx_file("train-images-idx3-ubyte.gz", md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    _idx_file("train-labels-idx1-ubyte.gz", md5="25c81989df183df01b3e8a0aad5dffbe"),
    _idx_file("t10k-images-idx3-ubyte.gz", md5="bef4ecab320f06d8554ea6380940ec79"),
    _idx_file("t10k-labels-idx1-ubyte.gz", md5="bb300cfdad3c16e7a12a480ee83cd310"),
)
FASHION_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
)
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Boot",
)


def load_idx_dataset(name: str, root: Path, files, mirrors, classes) -> RawDataset:
    folder = root / name
    arrays = []
    for spec in files:
        content = fetch(folder, spec, mirrors_for(mirrors), name)
        try:
            arrays.append(parse_idx(content, str(folder / spec.name)))
        except ValueError as e:
            raise DataError(str(e)) from None
    xtr, ytr, xte, yte = (torch.from_numpy(a.copy()) for a in arrays)
    shapes = ", ".join(str(tuple(t.shape)) for t in (xtr, ytr, xte, yte))
    if xtr.shape[1:] != (28, 28) or xte.shape[1:] != (28, 28) or ytr.dim() != 1 or yte.dim() != 1:
        raise DataError(f"{folder}: unexpected shapes {shapes}; expected (N, 28, 28), (N,), (M, 28, 28), (M,)")
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DataError(f"{folder}: unexpected shapes {shapes}; images and labels differ in number")
    for labels, spec in ((ytr, files[1]), (yte, files[3])):
        if labels.dtype.is_floating_point or len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < 10:
            raise DataError(f"{folder / spec.name}: labels must be integers 0..9")
    info = DatasetInfo(name, (1, 28, 28), 10, classes)
    return RawDataset(TensorData(xtr.unsqueeze(1), ytr.long()), TensorData(xte.unsqueeze(1), yte.long()), info)


@DATASETS.register("mnist", help="70k 28×28 handwritten digits; LeCun et al. 1998 (downloaded, sha256-verified)")
def mnist(root: Path) -> RawDataset:
    return load_idx_dataset("mnist", root, MNIST_FILES, MNIST_MIRRORS, tuple(str(i) for i in range(10)))


@DATASETS.register("fashion-mnist", help="70k 28×28 clothing images; Xiao et al. 2017 (downloaded, md5-verified)")
def fashion_mnist(root: Path) -> RawDataset:
    return load_idx_dataset("fashion-mnist", root, FASHION_FILES, FASHION_MIRRORS, FASHION_CLASSES)


@DATASETS.register("mnist1d", help="5k 1-D signals of 40 samples, generated offline; Greydanus 2020")
def mnist1d(root: Path) -> RawDataset:
    cache = root / "mnist1d" / "mnist1d_default.npz"
    if cache.exists():
        try:
            with np.load(cache) as f:
                d = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(f"mnist1d: cached {cache} is corrupt ({e}); delete it to generate it again") from None
    else:
        from mnist1d.data import get_dataset_args, make_dataset

        # the generator seeds python's and numpy's global RNGs: leave the caller's intact
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            made = make_dataset(get_dataset_args())
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        d = {
            k: np.asarray(made[k], dtype=np.float32 if k.startswith("x") else np.int64)
            for k in ("x", "y", "x_test", "y_test")
        }
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, **d)
            atomic_write(cache, buf.getvalue())
        except OSError as e:
            print(
                f"note: mnist1d generated in memory; cannot cache it in {cache.parent} ({e.strerror})",
                file=sys.stderr,
            )
    x, xt = torch.from_numpy(d["x"]).float().unsqueeze(1), torch.from_numpy(d["x_test"]).float().unsqueeze(1)
    info = DatasetInfo("mnist1d", (1, x.shape[-1]), 10, tuple(str(i) for i in range(10)))
    return RawDataset(
        TensorData(x, torch.from_numpy(d["y"]).long()),
        TensorData(xt, torch.from_numpy(d["y_test"]).long()),
        info,
    )


@DATASETS.register("synthetic", help="tiny procedural 4-class 8×8 images for tests (no files)")
def synthetic(root: Path, n_train: int = 512, n_test: int = 128, seed: int = 0) -> RawDataset:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(4, 1, 8, 8, generator=g) * 40

    def make(n):
        y = torch.randint(0, 4, (n,), generator=g)
        x = (protos[y] + 60 * torch.randn(n, 1, 8, 8, generator=g) + 128).clamp(0, 255).round()
        return TensorData(x.to(torch.uint8), y)

    return RawDataset(make(n_train), make(n_test), DatasetInfo("synthetic", (1, 8, 8), 4, ("a", "b", "c", "d")))

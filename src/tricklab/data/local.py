"""The user's own data: a .npz of arrays (``npz``) or a CSV of numeric features with a label column (``csv``).

Both are selected by ``data.name`` with the file in ``data.path``; options come from ``data.kwargs``::

    data: {name: npz, path: ~/data/shapes.npz}                      # x_train, y_train[, x_test, y_test]
    data: {name: csv, path: iris.csv, kwargs: {label: species}}    # features (F,) for a tabular MLP

Everything is checked once, at load, with one line naming the file: missing arrays or columns, lengths that
differ, NaN/Inf inputs, non-numeric cells, labels that are not integers in 0..C−1. Labels are class indices;
C is ``num_classes`` if given, else the largest label + 1. Without a test set of its own, a fixed 20% of the
examples is held out as the test set, drawn with a fixed seed (``HOLDOUT_SEED``), so that it is the same for
every ``train.seed`` and every run can be compared on it.
"""

from __future__ import annotations

import csv as csvlib
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tricklab.data.base import DatasetInfo, RawDataset, TensorData
from tricklab.data.sources import DATASETS
from tricklab.errors import ConfigError, DataError

HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0  # fixed: not train.seed, so the held-out test set is the same for every run
MIN_EXAMPLES_TO_HOLD_OUT = 5  # one test example and four left for training and validation

#: Where a value is, for messages: ``("x_train", (5, 0, 2))`` → ``"x_train[5, 0, 2]"`` (a CSV says line, column).
Locate = Callable[[str, tuple[int, ...]], str]


def _index(what: str, index: tuple[int, ...]) -> str:
    return f"{what}[{', '.join(str(i) for i in index)}]"


def _file(path: str | Path | None, name: str, holds: str) -> Path:
    if path is None:
        raise ConfigError("data.path", None, f"required for data.name={name}: {holds}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{name}: data file {p} does not exist (data.path)")
    if not p.is_file():
        raise DataError(f"{name}: data.path {p} is not a file")
    return p


def _check_num_classes(num_classes: object) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError("data.kwargs.num_classes", num_classes, "must be an integer ≥ 2, or null for max label + 1")
    return num_classes


def _inputs(x: np.ndarray, what: str, where: str, locate: Locate) -> torch.Tensor:
    """``x`` as a float32 tensor (uint8 images stay uint8); DataError on non-numeric or non-finite values."""
    if x.ndim < 2:
        raise DataError(f"{where}: {what} has shape {x.shape}; expected (N, features...) with N examples")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x))
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: {what} has dtype {x.dtype}; expected numbers (int, float or uint8 images)")
    with np.errstate(over="ignore"):  # values beyond float32's range become ±Inf, reported just below
        x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{where}: {int(bad.sum())} NaN/Inf input values (as float32), the first at {locate(what, first)}"
        )
    return torch.from_numpy(x)


def _labels(y: np.ndarray, what: str, where: str, locate: Locate) -> np.ndarray:
    """``y`` as int64 class indices of shape (N,); DataError if they are not integers."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: {what} has shape {y.shape}; expected (N,) class indices")
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind != "f":
        raise DataError(f"{where}: {what} has dtype {y.dtype}; labels must be integer class indices 0..C−1")
    bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
    if len(bad):
        raise DataError(f"{where}: label {y[bad[0]]} at {locate(what, (int(bad[0]),))} is not an integer class index")
    return y.astype(np.int64)


def _num_classes(labels: dict[str, np.ndarray], num_classes: int | None, where: str, locate: Locate) -> int:
    """C: ``num_classes``, else the largest label + 1; every label must lie in 0..C−1."""
    top = max(int(y.max()) for y in labels.values())
    n_classes = num_classes if num_classes is not None else top + 1
    for what, y in labels.items():
        bad = np.flatnonzero((y < 0) | (y >= n_classes))
        if len(bad):
            origin = "data.kwargs.num_classes" if num_classes is not None else "max label + 1"
            raise DataError(
                f"{where}: label {y[bad[0]]} at {locate(what, (int(bad[0]),))} is outside 0..{n_classes - 1} "
                f"(C = {n_classes}, from {origin})"
            )
    present = np.unique(np.concatenate(list(labels.values())))
    if len(present) < 2:
        raise DataError(f"{where}: every example has label {present[0]}; a classifier needs at least 2 classes")
    return n_classes


def _hold_out(x: torch.Tensor, y: torch.Tensor, where: str) -> tuple[TensorData, TensorData]:
    """Split off a fixed 20% as the test set (seed ``HOLDOUT_SEED``), saying so on stderr."""
    n = len(y)
    if n < MIN_EXAMPLES_TO_HOLD_OUT:
        raise DataError(
            f"{where}: {n} examples are too few to hold out a test set "
            f"(need at least {MIN_EXAMPLES_TO_HOLD_OUT}, or give a test set of its own)"
        )
    n_test = int(round(n * HOLDOUT_FRACTION))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    test, train = order[:n_test], order[n_test:]
    print(
        f"note: {where} has no test set; holding out a fixed {HOLDOUT_FRACTION:.0%} ({n_test} of {n} examples, "
        f"seed {HOLDOUT_SEED}, the same for every train.seed) as the test set",
        file=sys.stderr,
    )
    return TensorData(x[train], y[train]), TensorData(x[test], y[test])


def _dataset(
    name: str, where: str, arrays: dict[str, np.ndarray], num_classes: int | None, locate: Locate = _index
) -> RawDataset:
    """Validate x_train, y_train[, x_test, y_test] and build the RawDataset (holding out a test set if none)."""
    for key, a in arrays.items():
        if a.ndim == 0:
            raise DataError(f"{where}: {key} is a single value (shape ()); expected one row per example")
    for split in ("train", "test"):
        if f"x_{split}" not in arrays:
            continue
        nx, ny = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if nx != ny:
            raise DataError(f"{where}: x_{split} has {nx} examples but y_{split} has {ny}")
        if nx == 0:
            raise DataError(f"{where}: x_{split} holds no examples")
    xs = {k: _inputs(a, k, where, locate) for k, a in arrays.items() if k.startswith("x")}
    ys = {k: _labels(a, k, where, locate) for k, a in arrays.items() if k.startswith("y")}
    if "x_test" in xs:
        if xs["x_train"].shape[1:] != xs["x_test"].shape[1:]:
            raise DataError(
                f"{where}: x_train examples have shape {tuple(xs['x_train'].shape[1:])} but x_test examples "
                f"{tuple(xs['x_test'].shape[1:])}"
            )
        if xs["x_train"].dtype != xs["x_test"].dtype:  # uint8 on one side only: both float32
            xs = {k: x.float() for k, x in xs.items()}
    n_classes = _num_classes(ys, num_classes, where, locate)
    y = {k: torch.from_numpy(v) for k, v in ys.items()}
    if "x_test" in xs:
        train, test = TensorData(xs["x_train"], y["y_train"]), TensorData(xs["x_test"], y["y_test"])
    else:
        train, test = _hold_out(xs["x_train"], y["y_train"], where)
    info = DatasetInfo(name, tuple(train.x.shape[1:]), n_classes, tuple(str(c) for c in range(n_classes)))
    return RawDataset(train, test, info)


NPZ_HOLDS = "a .npz file holding x_train, y_train[, x_test, y_test]"
#: What reading a damaged .npz raises: NotImplementedError for a zip version, compression method or encryption
#: zipfile cannot read, zlib.error for a bad deflate stream, RuntimeError for an encrypted member.
_NPZ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
)


@DATASETS.register("npz", help="your arrays: a .npz in data.path with x_train, y_train[, x_test, y_test]")
def npz(root: Path, path: str | Path | None = None, num_classes: int | None = None) -> RawDataset:
    """Load ``x_train, y_train`` (and ``x_test, y_test`` if present) from the .npz file ``path``.

    Images are (N, C, H, W) (uint8 kept as uint8), tabular data (N, F); labels are integers 0..C−1. The file
    is read with ``allow_pickle=False``: it can hold numbers only, never code.

    Example::

        np.savez("shapes.npz", x_train=x, y_train=y)         # then: data.name=npz data.path=shapes.npz
    """
    p = _file(path, "npz", NPZ_HOLDS)
    n_classes = _check_num_classes(num_classes)
    try:
        with p.open("rb") as fh:
            magic = fh.read(6)
            if magic == b"\x93NUMPY":
                raise DataError(f"{p} is a single .npy array, not {NPZ_HOLDS}")
            if not magic.startswith(b"PK"):
                raise DataError(f"{p} is not a valid .npz file (it has no zip header)")
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as f:  # a zip file: always an NpzFile
                names = set(f.files)
                missing = [k for k in ("x_train", "y_train") if k not in names]
                if missing:
                    held = ", ".join(sorted(names)) or "no arrays"
                    raise DataError(f"{p} lacks {', '.join(missing)}; it holds {held}")
                if ("x_test" in names) != ("y_test" in names):
                    have, lack = ("x_test", "y_test") if "x_test" in names else ("y_test", "x_test")
                    raise DataError(f"{p} holds {have} but not {lack}; give both or neither")
                keys = ["x_train", "y_train"] + (["x_test", "y_test"] if "x_test" in names else [])
                arrays = {k: f[k] for k in keys}
            if not_arrays := [k for k, a in arrays.items() if not isinstance(a, np.ndarray)]:
                raise DataError(f"{p}: {', '.join(not_arrays)} is not a .npy array inside the .npz")
    except _NPZ_ERRORS as e:
        raise DataError(f"{p} is not a valid .npz file ({e})") from None
    return _dataset("npz", str(p), arrays, n_classes)


@DATASETS.register("csv", help="your table: a CSV in data.path, header row, numeric features and a label column")
def csv(
    root: Path,
    path: str | Path | None = None,
    label: str = "label",
    delimiter: str = ",",
    num_classes: int | None = None,
) -> RawDataset:
    """Load a CSV of numeric features with a header row and an integer ``label`` column; features are (F,).

    There is no test set in a CSV: a fixed 20% of the rows is held out as one (see the module docstring).

    Example::

        x1,x2,label        # data.name=csv data.path=points.csv (data.kwargs.label names another column)
        0.5,1.25,0
        -1.0,3.0,2
    """
    p = _file(path, "csv", "a CSV file with a header row, numeric feature columns and a label column")
    n_classes = _check_num_classes(num_classes)
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ConfigError("data.kwargs.delimiter", delimiter, "must be a single character such as ',' or ';'")
    if not isinstance(label, str):
        raise ConfigError("data.kwargs.label", label, "must be the name of the label column")
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            rows = csvlib.reader(f, delimiter=delimiter)
            header = [h.strip() for h in next(rows, [])]
            if not header:
                raise DataError(f"{p} is empty or starts with a blank line; expected a header row, then the rows")
            if label not in header:
                shown = ", ".join(header[:12]) + (f", … ({len(header)} columns)" if len(header) > 12 else "")
                hint = f"; is data.kwargs.delimiter={delimiter!r} right?" if len(header) == 1 else ""
                raise DataError(f"{p} has no column {label!r} (data.kwargs.label); its columns: {shown}{hint}")
            if header.count(label) > 1:
                raise DataError(f"{p} has {header.count(label)} columns named {label!r}")
            if len(header) < 2:
                raise DataError(f"{p} has no feature columns besides {label!r}")
            values, lines = [], []
            for row in rows:
                if not row:  # a blank line
                    continue
                if len(row) != len(header):
                    raise DataError(f"{p}: line {rows.line_num} has {len(row)} cells, the header {len(header)}")
                try:
                    values.append([float(c) for c in row])
                    lines.append(rows.line_num)
                except ValueError:
                    col = next(i for i, c in enumerate(row) if not _is_number(c))
                    raise DataError(
                        f"{p}: line {rows.line_num}, column {header[col]!r}: {row[col][:40]!r} is not a number"
                    ) from None
    except (UnicodeDecodeError, csvlib.Error) as e:
        raise DataError(f"{p} is not a valid CSV text file ({e})") from None
    except OSError as e:
        raise DataError(f"cannot read {p}: {e.strerror or e}") from None
    if not values:
        raise DataError(f"{p} has a header but no rows of examples")
    table = np.asarray(values, dtype=np.float64)
    j = header.index(label)
    names = [h for i, h in enumerate(header) if i != j]

    def locate(what: str, index: tuple[int, ...]) -> str:
        return f"line {lines[index[0]]}, column {(names[index[1]] if what.startswith('x') else label)!r}"

    features = np.delete(table, j, axis=1)
    return _dataset("csv", str(p), {"x_train": features, "y_train": table[:, j]}, n_classes, locate)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True

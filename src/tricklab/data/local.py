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
import itertools
import math
import sys
import zipfile
import zlib
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from tricklab.data.base import MAX_CLASSES, DatasetInfo, RawDataset, TensorData, largest_label_error
from tricklab.data.registry import DATASETS
from tricklab.errors import ConfigError, DataError
from tricklab.host import available_memory, human_bytes

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
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= MAX_CLASSES:
        allowed = f"must be an integer from 2 to {MAX_CLASSES}, or null for max label + 1"
        raise ConfigError("data.kwargs.num_classes", num_classes, allowed)
    return num_classes


def _inputs(x: np.ndarray, what: str, where: str, locate: Locate) -> torch.Tensor:
    """``x`` as a float32 tensor (uint8 images stay uint8); DataError on non-numeric or non-finite values."""
    if x.ndim < 2:
        raise DataError(f"{where}: {what} has shape {x.shape}; expected (N, features...) with N examples")
    if math.prod(x.shape[1:]) == 0:
        raise DataError(f"{where}: {what} has shape {x.shape}: its examples hold no features; expected at least one")
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
    if y.dtype.kind not in "biuf":
        raise DataError(f"{where}: {what} has dtype {y.dtype}; labels must be integer class indices 0..C−1")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(bad):
            raise DataError(
                f"{where}: label {y[bad[0]]} at {locate(what, (int(bad[0]),))} is not an integer class index"
            )
    # Compared in the labels' own dtype, before the cast to int64: uint64 labels ≥ 2⁶³ would wrap to negatives
    # and floats beyond int64 have no integer at all.
    too_large = np.flatnonzero(y > MAX_CLASSES - 1)
    if len(too_large):
        i = int(too_large[0])
        raise DataError(largest_label_error(where, y[i], f" at {locate(what, (i,))}"))
    too_small = np.flatnonzero(y < -MAX_CLASSES)  # what lies within int64 is reported with C, below
    if len(too_small):
        i = int(too_small[0])
        raise DataError(f"{where}: label {y[i]} at {locate(what, (i,))} is negative; labels are class indices 0..C−1")
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
#: The most bytes of arrays a data file may declare (an .npz's arrays as stored, a CSV's size), whatever is free.
MAX_DATA_BYTES = 16 * 2**30
#: Loading a data file may use at most this fraction of the memory available when it starts.
MEMORY_FRACTION = 0.5
#: Bytes a CSV cell takes while it loads: 8 as read, 8 as the features without the label column, 4 as float32
#: and 4 again once the test set is held out.
CSV_BYTES_PER_CELL = 24
#: The longest line of a CSV, in characters (a row of 400,000 ten-character numbers).
MAX_CSV_LINE = 4 * 2**20


def _held_bytes(key: str, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes of array ``key`` once loaded: inputs as float32 (uint8 images as uint8), labels as int64."""
    per_value = 8 if key.startswith("y") else 1 if dtype == np.uint8 else 4
    return math.prod(shape) * per_value


def _check_load_size(where: str, stored: int, held: int, detail: str) -> None:
    """Refuse a data file before reading it when it declares more than :data:`MAX_DATA_BYTES` (``stored`` bytes
    as read), or when loading it needs more than :data:`MEMORY_FRACTION` of the memory available now: ``stored``
    plus twice ``held``, the bytes once converted (converted, then split). ``detail`` says what it declares."""
    if stored > MAX_DATA_BYTES:
        raise DataError(f"{where}: {detail}; tricklab reads at most {human_bytes(MAX_DATA_BYTES)} from a data file")
    need, available = stored + 2 * held, available_memory()
    if available is not None and need > MEMORY_FRACTION * available:
        raise DataError(
            f"{where}: {detail}, which needs ~{human_bytes(need)} to load ({human_bytes(held)} as held, counted "
            f"twice: converted, then split); {human_bytes(available)} of memory is available and loading data may "
            f"use at most {MEMORY_FRACTION:.0%} of it"
        )


def _npy_header(z: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype that member ``info`` (array ``key``) declares in its .npy header, read without its data;
    DataError unless the header is a valid one of numbers whose data size is what the zip entry holds."""
    with z.open(info) as fh:
        try:
            version = np.lib.format.read_magic(fh)
        except ValueError:
            raise DataError(f"{where}: {key} is not a .npy array inside the .npz") from None
        if version not in ((1, 0), (2, 0)):
            raise DataError(f"{where}: {key} is a .npy array of format version {version}; tricklab reads 1.0 and 2.0")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
        header_size = fh.tell()
    if dtype.hasobject:
        raise DataError(
            f"{where}: {key} holds Python objects (dtype {dtype}); .npz files are read with allow_pickle=False: "
            "numbers only, never code"
        )
    if any(d < 0 for d in shape):
        raise DataError(f"{where}: {key} declares the shape {shape}, with a negative size")
    declared = math.prod(shape) * dtype.itemsize  # Python ints: no overflow whatever the header says
    if header_size + declared != info.file_size:
        raise DataError(
            f"{where}: {key} declares shape {shape} of {dtype} ({declared:,} bytes) but its zip entry holds "
            f"{info.file_size - header_size:,} bytes of data"
        )
    return tuple(shape), dtype


@DATASETS.register("npz", help="your arrays: a .npz in data.path with x_train, y_train[, x_test, y_test]")
def npz(root: Path, path: str | Path | None = None, num_classes: int | None = None) -> RawDataset:
    """Load ``x_train, y_train`` (and ``x_test, y_test`` if present) from the .npz file ``path``.

    Images are (N, C, H, W) (uint8 kept as uint8), tabular data (N, F); labels are integers 0..C−1. The file
    is read with ``allow_pickle=False``: it can hold numbers only, never code. Each array's .npy header is read
    first: the file is refused, before any data is read, when an array's declared size differs from its zip
    entry's or the arrays need more memory than allowed (:func:`_check_load_size`).

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
            with zipfile.ZipFile(fh) as z:
                members = {}  # array name → zip entry, as np.load names them (``x_train.npy`` → ``x_train``)
                for info in z.infolist():
                    members[info.filename.removesuffix(".npy")] = info
                missing = [k for k in ("x_train", "y_train") if k not in members]
                if missing:
                    held = ", ".join(sorted(members)) or "no arrays"
                    raise DataError(f"{p} lacks {', '.join(missing)}; it holds {held}")
                if ("x_test" in members) != ("y_test" in members):
                    have, lack = ("x_test", "y_test") if "x_test" in members else ("y_test", "x_test")
                    raise DataError(f"{p} holds {have} but not {lack}; give both or neither")
                keys = ["x_train", "y_train"] + (["x_test", "y_test"] if "x_test" in members else [])
                headers = {k: _npy_header(z, members[k], k, str(p)) for k in keys}
                stored = sum(math.prod(shape) * dtype.itemsize for shape, dtype in headers.values())
                held = sum(_held_bytes(k, shape, dtype) for k, (shape, dtype) in headers.items())
                big = max(keys, key=lambda k: math.prod(headers[k][0]) * headers[k][1].itemsize)
                shape, dtype = headers[big]
                detail = f"its arrays declare {human_bytes(stored)} ({big} the most: shape {shape} of {dtype})"
                _check_load_size(str(p), stored, held, detail)
                arrays = {}
                for k in keys:
                    with z.open(members[k]) as member:
                        arrays[k] = np.lib.format.read_array(member, allow_pickle=False)
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
    stored = p.stat().st_size
    _check_load_size(str(p), stored, 0, f"the file holds {human_bytes(stored)}")
    available = available_memory()
    # Without a figure for the memory available, the file's size (checked just above) bounds its cells.
    max_cells = math.inf if available is None else int(MEMORY_FRACTION * available) // CSV_BYTES_PER_CELL
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            rows = csvlib.reader(_bounded_lines(f, str(p)), delimiter=delimiter)
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
            values, lines = array("d"), array("q")  # 8 bytes a cell, not a Python float's 32
            for row in rows:
                if not row:  # a blank line
                    continue
                if len(row) != len(header):
                    raise DataError(f"{p}: line {rows.line_num} has {len(row)} cells, the header {len(header)}")
                if len(values) + len(row) > max_cells:
                    raise DataError(
                        f"{p}: more than {len(lines):,} rows of {len(header)} columns need more than "
                        f"{human_bytes(max_cells * CSV_BYTES_PER_CELL)} to load, {MEMORY_FRACTION:.0%} of the "
                        f"{human_bytes(available)} of memory available"
                    )
                try:
                    values.extend([float(c) for c in row])
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
    table = np.frombuffer(values, dtype=np.float64).reshape(len(lines), len(header))
    j = header.index(label)
    names = [h for i, h in enumerate(header) if i != j]

    def locate(what: str, index: tuple[int, ...]) -> str:
        return f"line {lines[index[0]]}, column {(names[index[1]] if what.startswith('x') else label)!r}"

    features = np.delete(table, j, axis=1)
    return _dataset("csv", str(p), {"x_train": features, "y_train": table[:, j]}, n_classes, locate)


def _bounded_lines(f, where: str) -> Iterator[str]:
    """The lines of text file ``f``, DataError on one longer than :data:`MAX_CSV_LINE` characters (the csv
    module would hold all of it, and a list of its cells, at once)."""
    for number in itertools.count(1):
        line = f.readline(MAX_CSV_LINE + 1)
        if not line:
            return
        if len(line) > MAX_CSV_LINE:
            raise DataError(f"{where}: line {number} is longer than {MAX_CSV_LINE:,} characters")
        yield line


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True

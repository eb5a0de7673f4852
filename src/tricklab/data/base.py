"""In-memory tensor datasets and fast batching (an index permutation per epoch, no per-sample collation)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

#: The most classes a dataset may have. Each class costs an output unit of the model, a class name and a
#: per-class count, so one label of 10⁹ in a 3 KB file would otherwise ask for gigabytes before training starts;
#: 100,000 is over four times ImageNet-21k's 21,841 classes.
MAX_CLASSES = 100_000
#: Label dtypes torch has few kernels for (``max`` fails on uint64) and whose ``.long()`` wraps 2⁶³ and above.
_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    classes: tuple[str, ...] = ()


@dataclass
class TensorData:
    """Inputs ``x`` (N, ...) and integer labels ``y`` (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} examples but y has {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class RawDataset:
    """What a dataset source returns: the official train and test sets, unscaled."""

    train: TensorData
    test: TensorData
    info: DatasetInfo


@dataclass
class Splits:
    """Train / validation / test splits ready for training; ``scaler`` was fitted on ``train`` only."""

    train: TensorData
    val: TensorData
    test: TensorData
    info: DatasetInfo
    scaler: object = None
    notes: list[str] = field(default_factory=list)


class TensorBatches:
    """Iterate over ``(x, y)`` mini-batches of in-memory tensors.

    Each pass draws one index permutation from ``generator`` (when ``shuffle``) and slices the tensors with
    it: no Python-level per-sample work, which is what makes an MNIST epoch as fast as a hand-written loop.
    ``drop_last`` drops a final partial batch. ``merge_single`` joins a final batch of one example to the batch
    before it (129 examples in batches of 128: one batch of 129): batch norm cannot train on a single example,
    and merging, unlike dropping, still trains on every example each epoch. Neither changes the permutation
    drawn, so the data order (and a checkpoint's position in it) is the same with and without them.

    Example::

        for x, y in TensorBatches(data.x, data.y, batch_size=128, shuffle=True, generator=g): ...
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        merge_single: bool = False,
        pin_memory: bool = False,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.generator, self.drop_last = shuffle, generator, drop_last
        self.merge_single, self.pin_memory = merge_single, pin_memory

    def __len__(self) -> int:
        n, b = len(self.y), self.batch_size
        if self.drop_last:
            return n // b
        merged = self.merge_single and n > b and n % b == 1
        return math.ceil(n / b) - merged

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, b, k = len(self.y), self.batch_size, len(self)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        if order is not None and order.device != self.x.device:
            order = order.to(self.x.device)  # data on a GPU: one copy of the permutation per epoch, not per batch
        for i in range(k):
            end = n if i == k - 1 and not self.drop_last else (i + 1) * b  # the last batch takes what is left
            if order is None:
                x, y = self.x[i * b : end], self.y[i * b : end]
            else:
                idx = order[i * b : end]  # index_select: faster than x[idx] (benchmarks/micro.py)
                x, y = self.x.index_select(0, idx), self.y.index_select(0, idx)
            if self.pin_memory:  # host data for a GPU: page-locked batches copy asynchronously (non_blocking)
                x, y = x.pin_memory(), y.pin_memory()
            yield x, y


def as_raw_dataset(obj: object, name: str) -> RawDataset:
    """What a dataset loader returned, as a :class:`RawDataset` of tensors, checked.

    A loader may return a ``RawDataset``; a pair ``(train, test)`` where each is an ``(x, y)`` pair of tensors or
    NumPy arrays, or any map-style dataset whose items are ``(x, y)`` (e.g. a ``torch.utils.data.Dataset``); a
    4-tuple ``(x_train, y_train, x_test, y_test)``; or a mapping with those four keys. Inputs become float32
    tensors (uint8 images stay uint8), labels long; the classes are ``0 … max label``. Anything else is a
    :class:`~tricklab.errors.DataError` naming the dataset and what was wrong.
    """
    from tricklab.errors import DataError

    if isinstance(obj, RawDataset):
        _check_info(obj.info, name)
        return obj
    if isinstance(obj, dict):
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in obj]
        if missing:
            raise DataError(f"dataset {name!r}: the loader's mapping lacks {', '.join(missing)}")
        obj = (obj["x_train"], obj["y_train"], obj["x_test"], obj["y_test"])
    if isinstance(obj, (tuple, list)) and len(obj) == 4:
        obj = ((obj[0], obj[1]), (obj[2], obj[3]))
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise DataError(
            f"dataset {name!r}: the loader returned {type(obj).__name__}; expected (train, test) pairs of (x, y), "
            "(x_train, y_train, x_test, y_test), a mapping of those or a RawDataset"
        )
    train, test = (_as_tensor_data(part, name, which) for part, which in zip(obj, ("train", "test"), strict=True))
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(
            f"dataset {name!r}: train inputs are shaped {tuple(train.x.shape[1:])} but test inputs "
            f"{tuple(test.x.shape[1:])}"
        )
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    if num_classes < 2:
        raise DataError(f"dataset {name!r}: all labels are 0; at least 2 classes are needed")
    return RawDataset(train, test, DatasetInfo(name, tuple(train.x.shape[1:]), num_classes))


def _check_info(info: DatasetInfo, name: str) -> None:
    """A loader's own :class:`DatasetInfo`: 2 to :data:`MAX_CLASSES` classes and at least one input feature."""
    from tricklab.errors import DataError

    n = info.num_classes
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_CLASSES:
        raise DataError(f"dataset {name!r}: num_classes = {n!r}; a dataset has 2 to {MAX_CLASSES:,} classes")
    if math.prod(info.input_shape) == 0:
        raise DataError(f"dataset {name!r}: inputs of shape {tuple(info.input_shape)} hold no features")


def largest_label_error(where: str, label: object, at: str = "") -> str:
    """The message for a label beyond the largest class index (:data:`MAX_CLASSES` − 1)."""
    value = float(label)  # a CSV's labels are read as floats: 1000000000.0 is shown as 1000000000
    if value.is_integer() and abs(value) < 2**53:
        label = int(value)
    return (
        f"{where}: label {label}{at} is too large: tricklab takes at most {MAX_CLASSES:,} classes "
        f"(labels 0..{MAX_CLASSES - 1})"
    )


def _as_tensor_data(part: object, name: str, which: str) -> TensorData:
    from tricklab.errors import DataError

    where = f"dataset {name!r} ({which})"
    if isinstance(part, TensorData):
        x, y = part.x, part.y
    elif isinstance(part, (tuple, list)) and len(part) == 2:
        x, y = part
    elif hasattr(part, "__getitem__") and hasattr(part, "__len__"):  # a map-style dataset of (x, y) items
        items = [part[i] for i in range(len(part))]
        if not items:
            raise DataError(f"{where}: holds no examples")
        try:
            x = torch.stack([torch.as_tensor(item[0]) for item in items])
            y = torch.as_tensor([int(item[1]) for item in items])
        except (TypeError, ValueError, IndexError, RuntimeError) as e:
            raise DataError(f"{where}: items must be (x, y): tensors of one shape, integer labels ({e})") from None
    else:
        raise DataError(f"{where}: got {type(part).__name__}; expected (x, y) or a dataset of (x, y) items")
    try:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{where}: x and y must be tensors or numeric arrays ({e})") from None
    if x.ndim < 2 or y.ndim != 1:
        raise DataError(f"{where}: x must be (N, ...) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if math.prod(x.shape[1:]) == 0:
        raise DataError(f"{where}: x has shape {tuple(x.shape)}: its examples hold no features")
    if len(x) != len(y):
        raise DataError(f"{where}: x has {len(x)} examples but y has {len(y)}")
    if len(y) == 0:
        raise DataError(f"{where}: holds no examples")
    if x.dtype != torch.uint8:
        if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
            raise DataError(f"{where}: inputs must be numbers, got {x.dtype}")
        x = x.float()
        bad = ~torch.isfinite(x)
        if bad.any():
            first = int(bad.reshape(len(x), -1).any(1).nonzero()[0])
            raise DataError(f"{where}: {int(bad.sum())} NaN/Inf input values (first in example {first})")
    if y.is_floating_point():
        if not torch.equal(y, y.round()) or not torch.isfinite(y).all():
            raise DataError(f"{where}: labels must be integers 0 … C−1")
    elif y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{where}: labels must be integers 0 … C−1, got {y.dtype}")
    top = y.cpu().numpy().max() if y.dtype in _UNSIGNED else y.max().item()
    if top > MAX_CLASSES - 1:  # checked before .long(), which wraps uint64 ≥ 2⁶³ and floats beyond int64
        raise DataError(largest_label_error(where, top))
    y = y.long()
    if int(y.min()) < 0:
        raise DataError(f"{where}: label {int(y.min())} is negative; labels must be 0 … C−1")
    return TensorData(x, y)

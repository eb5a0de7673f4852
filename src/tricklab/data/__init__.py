"""Datasets by name, validation splits and input scaling.

Example::

    splits = load_splits("mnist", val_fraction=0.1, scale="standardize", seed=0)
    splits.train.x.shape   # (54000, 1, 28, 28), float32, standardized with training statistics
"""

from __future__ import annotations

import os

import torch

from tricklab.data.base import DatasetInfo, RawDataset, Splits, TensorBatches, TensorData, as_raw_dataset
from tricklab.data.download import data_root
from tricklab.data.registry import DATASETS
from tricklab.errors import ConfigError
from tricklab.tricks.scaling import fit_scaler

# The built-in datasets register into DATASETS as their modules are imported: here and nowhere else, in the order
# `tricklab list datasets` shows them.
# isort: off
from tricklab.data import sources, cifar, local  # noqa: F401
# isort: on


def load_splits(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    scale: str = "standardize",
    subset: int | None = None,
    seed: int = 0,
) -> Splits:
    """Load dataset ``name``, carve a seeded validation split off its training set, and scale all splits.

    The test set is kept apart for the final evaluation only. ``subset`` keeps the first ``subset`` examples
    of the (shuffled) training split; the validation split keeps its full size. Scaling statistics are
    fitted on the training split only.
    """
    raw: RawDataset = DATASETS.get(name)(data_root(root))
    return split_and_scale(raw, val_fraction=val_fraction, scale=scale, subset=subset, seed=seed)


def split_and_scale(
    raw: RawDataset, *, val_fraction: float = 0.1, scale: str = "standardize", subset: int | None = None, seed: int = 0
) -> Splits:
    """Carve a seeded validation split off ``raw.train`` and scale all splits with statistics of the training split."""
    name = raw.info.name
    if subset is not None and subset < 1:
        raise ConfigError("data.subset", subset, "must be a positive number of training examples, or null for all")
    n = len(raw.train)
    n_val = int(round(n * val_fraction))
    if not 0 < n_val < n:
        raise ConfigError(
            "data.val_fraction",
            val_fraction,
            f"leaves {n_val} of the {n} training examples of {name} for validation; "
            f"must leave at least one for validation and one for training",
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:n_val], order[n_val:]
    notes = []
    if subset is not None:
        if subset > len(train_idx):
            notes.append(f"data.subset={subset} exceeds the {len(train_idx)} training examples; using all")
        train_idx = train_idx[:subset]
    xtr, ytr = raw.train.x[train_idx], raw.train.y[train_idx]
    scaler = fit_scaler(xtr, scale)
    return Splits(
        train=TensorData(scaler.apply(xtr), ytr),
        val=TensorData(scaler.apply(raw.train.x[val_idx]), raw.train.y[val_idx]),
        test=TensorData(scaler.apply(raw.test.x), raw.test.y),
        info=raw.info,
        scaler=scaler,
        notes=notes,
    )


__all__ = [
    "DATASETS",
    "DatasetInfo",
    "RawDataset",
    "Splits",
    "TensorBatches",
    "TensorData",
    "as_raw_dataset",
    "data_root",
    "load_splits",
    "split_and_scale",
]

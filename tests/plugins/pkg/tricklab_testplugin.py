"""A plugin package as a user would write one: a model factory, a dataset loader and a callback, each declared a
tricklab part (``@tricklab.model`` / ``dataset`` / ``callback``) so that configs may name them by import path, plus
broken ones for the bad-plugin tests and one left undeclared. Put on sys.path by tests/plugins/conftest.py (and
PYTHONPATH for the CLI)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

import tricklab
from tricklab.events import Callback


@tricklab.model
def small_mlp(input_shape, num_classes, hidden: int = 16, dropout: float = 0.0) -> nn.Module:
    """flatten → Linear(hidden) → ReLU → Dropout → Linear."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


@tricklab.dataset
def blobs(n_train: int = 240, n_test: int = 60, classes: int = 3, seed: int = 0):
    """Gaussian blobs in 6 dimensions: (x_train, y_train, x_test, y_test) as NumPy arrays."""
    g = np.random.default_rng(seed)
    centers = g.normal(scale=3.0, size=(classes, 6))
    y = np.arange(n_train + n_test) % classes
    x = centers[y] + g.normal(size=(len(y), 6))
    return x[:n_train].astype(np.float32), y[:n_train], x[n_train:].astype(np.float32), y[n_train:]


@tricklab.callback
class CountSteps(Callback):
    """Counts optimizer steps into a module-level list (so a test can read it after the run)."""

    seen: list[int] = []

    def __init__(self, label: str = "count"):
        self.label = label

    def on_step_end(self, state) -> None:
        CountSteps.seen.append(state.step)


NOT_CALLABLE = 42


@tricklab.model
def not_a_module(input_shape, num_classes):
    return "a string"


@tricklab.model
def wrong_output(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes + 3))


@tricklab.model
def needs_width(input_shape, num_classes, *, channels):
    return small_mlp(input_shape, num_classes, hidden=channels)


@tricklab.model
def raises_when_built(input_shape, num_classes):
    raise RuntimeError("out of ideas")


@tricklab.dataset
def tensor_data(n: int = 128):
    """A loader returning torch tensors for train and test as pairs."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 6, generator=g), torch.arange(n) % 2
    return (x[: n // 2], y[: n // 2]), (x[n // 2 :], y[n // 2 :])


def undeclared_mlp(input_shape, num_classes, hidden: int = 16) -> nn.Module:
    """A valid model factory that does not declare itself: import paths must not reach it."""
    return small_mlp(input_shape, num_classes, hidden)

"""Shared fixtures: tiny synthetic data, a boring model, and where real MNIST lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The folder holding mnist/ (env TRICKLAB_DATA, else ../shared/data beside the repo), or None."""
    for cand in (os.environ.get("TRICKLAB_DATA"), REPO.parent / "shared" / "data"):
        if cand and (Path(cand) / "mnist" / "train-images-idx3-ubyte.gz").exists():
            return Path(cand).resolve()
    return None


@pytest.fixture
def mnist_root() -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("real MNIST files not found (set TRICKLAB_DATA to a folder holding mnist/)")
    return root


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests run on 2-core machines beside other work: keep torch to one thread unless a test says otherwise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def blobs():
    """A linearly separable 3-class problem in 2-D: (x_train, y_train, x_val, y_val)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.5]])
    y = torch.randint(0, 3, (300,), generator=g)
    x = centres[y] + 0.5 * torch.randn(300, 2, generator=g)
    return x[:240], y[:240], x[240:], y[240:]

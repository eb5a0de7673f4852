"""Seeds and devices: one call makes a run repeatable on CPU."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from tricklab.errors import ConfigError


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a separate generator for the data order (seeded from ``seed``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1_000_003)


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", name, "no CUDA device is available here; use auto or cpu")
    return torch.device(name)


def set_threads(threads: int) -> int:
    """Use ``threads`` intra-op threads (0: all cores); return the number in use."""
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n

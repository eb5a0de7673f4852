"""Seeds and threads: one call makes a run repeatable on CPU."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a separate generator for the data order (seeded from ``seed``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1_000_003)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or ``taskset`` narrows), else the
    machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity on macOS and Windows
        return os.cpu_count() or 1


#: ``(requested, used)`` thread counts already warned about in this process.
_capped: set[tuple[int, int]] = set()


def set_threads(threads: int) -> int:
    """Use ``threads`` intra-op threads (0: every usable core), never more than :func:`usable_cores`: threads
    beyond the cores only wait for each other, and every step slows by orders of magnitude. A capped count is
    said once per process, in one line on stderr. Returns the number in use."""
    cores = usable_cores()
    n = min(threads or cores, cores)
    if threads > cores and (threads, n) not in _capped:
        _capped.add((threads, n))
        print(
            f"warning: train.threads={threads} but this process may use {cores} cores; using {n} threads",
            file=sys.stderr,
            flush=True,
        )
    torch.set_num_threads(n)
    return n

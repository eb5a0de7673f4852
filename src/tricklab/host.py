"""This machine as a run sees it: the memory available now and the device to train on.

Utilities below every layer that asks (the data loaders, the memory check, the lab's worker plan, the engine):
standard library and torch only, no config. Sizes print in binary units with :func:`human_bytes`.
"""

from __future__ import annotations

import math
import os

import torch

from tricklab.errors import ConfigError

#: Where Linux says how much memory is available (:func:`available_memory`).
MEMINFO = "/proc/meminfo"


def two_digits(n: int) -> str:
    """``n`` to two significant digits (``1.3e+11``), however large."""
    if n < 1e300:
        return f"{n:.2g}"
    exponent = math.floor(math.log10(n))  # exact for Python integers of any size; a float would overflow
    return f"{n / 10**exponent:.2g}e+{exponent}"


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units: ``'23.4 GiB'``, however large ``n`` is."""
    if n >= 2**100:  # beyond what a float divides without overflowing
        return f"{two_digits(int(n) // 2**50)} PiB"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError  # unreachable


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (``os.sysconf``), or None where the OS does not say."""
    return _sysconf_bytes("SC_PHYS_PAGES")


def available_memory() -> int | None:
    """Bytes of memory a new allocation can have now without swapping: ``MemAvailable`` of ``/proc/meminfo``
    (free memory plus the caches the kernel can drop), else ``os.sysconf``'s free pages (which leave the caches
    out), else the physical memory; None where the OS says none of them."""
    try:
        with open(MEMINFO, "rb") as f:
            for line in f.read(1 << 16).splitlines():
                if line.startswith(b"MemAvailable:"):
                    fields = line.split()
                    return int(fields[1]) * (1024 if fields[2:3] == [b"kB"] else 1)
    except (OSError, ValueError, IndexError):
        pass
    return _sysconf_bytes("SC_AVPHYS_PAGES") or physical_memory()


def _sysconf_bytes(name: str) -> int | None:
    try:
        pages, page_size = os.sysconf(name), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", name, "no CUDA device is available here; use auto or cpu")
    return torch.device(name)


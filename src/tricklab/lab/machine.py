"""What machine a lab ran on: CPU, cores, memory, OS and the versions that produced its numbers.

Recorded with each lab session (:meth:`tricklab.lab.store.Store.record_session`) so that a published report says
where its wall times come from. Standard library only (torch's version is read from its installed metadata, not
by importing it); a fact that cannot be found is left out, and :func:`machine_info` never raises.

Example::

    machine_info()  # {"cpu": "AMD EPYC 7B13", "cores": 16, "ram_gib": 62.8, "os": "Linux-6.1…", "python": "3.11.2",
                    #  "torch": "2.3.1+cpu", "tricklab": "0.1.0", "git_commit": "9df7010…", "git_dirty": False}
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
GIT_TIMEOUT_S = 5


def machine_info() -> dict[str, Any]:
    """This machine and software, as names → strings, numbers or booleans (JSON-ready; missing facts omitted)."""
    info: dict[str, Any] = {}
    facts = (
        ("cpu", _cpu_model),
        ("cores", os.cpu_count),
        ("ram_gib", _ram_gib),
        ("os", platform.platform),
        ("python", platform.python_version),
        ("torch", lambda: _version("torch")),
        ("tricklab", _tricklab_version),
    )
    for key, find in facts:
        try:
            value = find()
        except Exception:  # a fact we cannot read is left out, never an error at the end of a lab
            value = None
        if value not in (None, ""):
            info[key] = value
    try:
        info.update(_git())
    except Exception:
        pass
    return info


def _cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux; ``model name`` on x86, ``Model``/``Hardware`` on ARM)."""
    if CPUINFO.exists():
        fields = {}
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and value.strip():
                fields.setdefault(key.strip().lower(), value.strip())
        for key in ("model name", "model", "hardware", "cpu model", "processor"):
            if key in fields and not fields[key].isdigit():
                return " ".join(fields[key].split())
    return platform.processor() or platform.machine() or None


def _ram_gib() -> float | None:
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return round(pages * page_size / 2**30, 1) if pages > 0 and page_size > 0 else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _tricklab_version() -> str:
    import tricklab

    return tricklab.__version__


def _git() -> dict[str, Any]:
    """The commit of the git checkout tricklab is imported from, and whether its tracked files differ from it.

    Empty when tricklab is not a tracked file of a checkout (an installed wheel, even inside some repository)."""
    import tricklab

    package = Path(tricklab.__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(package), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
        )

    if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
        return {}
    head = git("rev-parse", "HEAD")
    if head.returncode != 0 or not head.stdout.strip():
        return {}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    out: dict[str, Any] = {"git_commit": head.stdout.strip()}
    if dirty.returncode == 0:
        out["git_dirty"] = bool(dirty.stdout.strip())
    return out

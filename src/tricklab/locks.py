"""One process at a time in a run or lab folder: an OS lock held for the life of the command that writes it.

Two processes writing one folder corrupt it silently (one run's config beside another's weights; lab results
stored under the wrong config), so ``train``, ``lab`` and ``report`` hold :func:`folder_lock` on the folder they
write. The lock is ``fcntl.flock`` on ``<folder>/.tricklab.lock``, whose content names the holder as JSON (pid,
host, start time, command line) for the refusal message::

    error: labs/x is in use by pid 1234 (tricklab lab dropout, started 12:01:02); wait for it or stop it

The kernel drops a flock when its holder dies, however it dies, so a lock left by a killed process never
blocks: the next holder takes the file and overwrites its stale JSON. A clean release deletes the file (a
holder checks, once locked, that the file it locked is still the one at the path, so deleting is race-free).
A process may lock a folder it already holds (a command, then the library function it calls): that nests.

Example::

    with folder_lock(Path("runs/a")):      # creates runs/a if needed; TrickLabError (exit 2) if in use
        ...                                 # write into runs/a
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from tricklab.errors import TrickLabError

LOCK_NAME = ".tricklab.lock"
_MAX_COMMAND = 200  # characters of the holder's command line shown in a refusal

_held: dict[str, list[int]] = {}  # resolved folder → [fd, depth] of the locks this process holds
_guard = threading.Lock()


class FolderInUse(TrickLabError):
    """Another process holds the folder's lock (exit code 2)."""


@contextmanager
def folder_lock(folder: str | Path, *, create: bool = True, label: str = "") -> Iterator[Path]:
    """Hold ``folder``'s lock for the ``with`` block; ``create`` makes the folder (and its parents) first.

    Raises :class:`FolderInUse` naming the holder when another live process holds it, and a one-line
    :class:`TrickLabError` when the path is a file or the lock file cannot be written. ``label`` prefixes those
    messages (e.g. ``"--out 'runs/a'"``); by default the folder's path.
    """
    folder = Path(folder)
    label = label or str(folder)
    try:
        is_file = folder.exists() and not folder.is_dir()
    except OSError as e:  # a name too long, a folder this user may not look into
        raise TrickLabError(f"{label}: cannot use that folder ({_reason(e)}); choose another path") from None
    if is_file:
        raise TrickLabError(f"{label}: is a file, not a folder; give a folder path (it is created if missing)")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrickLabError(f"{label}: cannot create the folder ({_reason(e)}); choose a writable path") from None
    elif not folder.is_dir():
        raise TrickLabError(f"{label}: no such folder")
    key = os.path.realpath(folder)
    with _guard:
        if key in _held:
            _held[key][1] += 1
            fd = None
        else:
            fd = _acquire(folder, label)
            _held[key] = [fd, 1]
    try:
        yield folder
    finally:
        with _guard:
            _held[key][1] -= 1
            if _held[key][1] == 0:
                _release(folder, _held.pop(key)[0])


def holds(folder: str | Path) -> bool:
    """Whether this process holds ``folder``'s lock."""
    return os.path.realpath(folder) in _held


def check_free(folder: str | Path, label: str = "") -> None:
    """Raise :class:`FolderInUse` if another live process holds ``folder``'s lock; create nothing.

    For a refusal that should name the process at work there first (e.g. a run folder that is not empty)."""
    path = Path(folder) / LOCK_NAME
    if holds(folder) or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise FolderInUse(f"{label or folder} is in use by {_holder(path)}; wait for it or stop it") from None
    finally:
        os.close(fd)


def _acquire(folder: Path, label: str) -> int:
    path = folder / LOCK_NAME
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the folder was removed meanwhile (a failed run cleaning up): try again
            time.sleep(0.05)
            continue
        except OSError as e:
            raise TrickLabError(f"{label}: cannot write its lock file {LOCK_NAME} ({_reason(e)})") from None
        try:
            _flock_exclusive(fd)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderInUse(f"{label} is in use by {_holder(path)}; wait for it or stop it") from None
            raise TrickLabError(f"{label}: cannot lock {LOCK_NAME} ({_reason(e)})") from None
        try:  # the holder we waited for may have deleted the file we opened: lock the one at the path
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _write_holder(fd)
            return fd
        os.close(fd)
    raise FolderInUse(f"{label} is in use (its lock file keeps changing); wait for it or stop it")


def _flock_exclusive(fd: int, tries: int = 5) -> None:
    """``LOCK_EX``, without waiting for a holder but for a moment's :func:`check_free` probe (a shared lock)."""
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or i == tries - 1:
                raise
            time.sleep(0.02)


def _release(folder: Path, fd: int) -> None:
    path = folder / LOCK_NAME
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            path.unlink()
    except OSError:  # already gone (a failed run removed its folder): nothing to delete
        pass
    os.close(fd)  # releases the flock


def _write_holder(fd: int) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().isoformat(timespec="seconds"),
        "command": command_line(),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


def _holder(path: Path) -> str:
    """``pid 1234 (tricklab lab dropout, started 12:01:02)`` from the lock file, as far as it can be read."""
    info = None
    for _ in range(5):  # the holder writes its JSON just after locking: give it a moment
        try:
            info = json.loads(path.read_text())
            if isinstance(info, dict):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    if not isinstance(info, dict):
        return "another process"
    who = f"pid {info.get('pid', '?')}"
    host = info.get("host")
    if isinstance(host, str) and host != socket.gethostname():
        who += f" on {host}"
    details = []
    command = info.get("command")
    if isinstance(command, str) and command:
        details.append(command if len(command) <= _MAX_COMMAND else command[: _MAX_COMMAND - 1] + "…")
    started = info.get("started")
    if isinstance(started, str):
        try:
            when = datetime.fromisoformat(started)
            shown = when.strftime("%H:%M:%S" if when.date() == datetime.now().date() else "%Y-%m-%d %H:%M:%S")
            details.append(f"started {shown}")
        except ValueError:
            pass
    return who + (f" ({', '.join(details)})" if details else "")


def command_line() -> str:
    """This process's command line as a user typed it: ``tricklab lab dropout`` rather than a script path."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if prog in ("tricklab", "__main__.py"):
        prog = "tricklab"
    return " ".join([prog, *sys.argv[1:]])


def _reason(e: OSError) -> str:
    return e.strerror or str(e)

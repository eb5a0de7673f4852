"""What a lab says while it runs: one event per run that starts, finishes or fails, and its progress counts.

An executor (:class:`tricklab.lab.runner.Executor`) reports each run with a :data:`RunEvent`; the lab records it in
its database and hands a :class:`LabCounts` snapshot to its progress callback (the CLI's and the API's progress line,
or any code that follows a lab: each snapshot names the event that made it, ``event``). Event kinds are the strings
``start``, ``done`` and ``failed`` (:attr:`RunStarted.kind` …), stable for code that matches on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple


class RunKey(NamedTuple):
    """One run of a lab: a study's variant, trained with one seed on one dataset (a tuple, as stored)."""

    study: str
    variant: str
    seed: int
    dataset: str


@dataclass(frozen=True)
class RunStarted:
    """A run was handed to a worker (or submitted to Ray, where a started run is one the cluster can hold now)."""

    key: tuple
    kind: ClassVar[str] = "start"


@dataclass(frozen=True)
class RunDone:
    """A run finished: its final metrics, per-epoch history and the hash of the config it actually ran."""

    key: tuple
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    config_hash: str
    kind: ClassVar[str] = "done"


@dataclass(frozen=True)
class RunFailed:
    """A run raised, or its worker died or was lost: ``error`` in one line, ``detail`` the traceback (may be empty)."""

    key: tuple
    error: str
    detail: str = ""
    kind: ClassVar[str] = "failed"


RunEvent = RunStarted | RunDone | RunFailed


@dataclass(frozen=True)
class LabCounts:
    """A lab's progress at one moment: runs to do (``total``, not counting ``skipped``: done before), done, failed,
    running; how they execute (``processes`` at once × ``threads``, ``executor`` in words); each finished run's
    seconds (``times``, for the ETA). ``event``: the run event this snapshot follows, if any; ``note``: a line to
    show (``--seeds auto`` adding seeds); ``finished``: the last snapshot, once every run has ended."""

    total: int = 0
    done: int = 0
    failed: int = 0
    running: int = 0
    skipped: int = 0
    processes: int = 1
    threads: int = 1
    times: tuple[float, ...] = ()
    executor: str = ""
    event: RunEvent | None = None
    note: str | None = None
    finished: bool = False

    @property
    def remaining(self) -> int:
        """Runs neither done nor failed yet (running or waiting)."""
        return self.total - self.done - self.failed

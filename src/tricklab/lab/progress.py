"""The lab's progress: runs done/running/failed and an ETA, and once, how the runs are executed."""

from __future__ import annotations

import sys
import time

from tricklab.lab.events import LabCounts


class LabProgress:
    """Runs done/running/failed and an ETA: a live line on a terminal, a plain line per finished run otherwise."""

    def __init__(self, console, live: bool | None = None):
        self.console, self.live = console, sys.stdout.isatty() if live is None else live
        self.start = time.perf_counter()
        self._status = None

    def __call__(self, c: LabCounts) -> None:
        from tricklab.lab.runner import eta_seconds

        eta = eta_seconds(list(c.times), c.remaining, c.processes)
        eta_s = "—" if eta != eta else f"{eta:.0f}s"
        skipped = f", {c.skipped} already done" if c.skipped else ""
        if c.executor and not getattr(self, "_said", False):
            self._said = True
            print(f"lab: {c.total} runs to do, {c.executor}", flush=True)
        if c.note:
            if self.live:
                self.console.print(c.note)
            else:
                print(c.note, flush=True)
            return
        line = (
            f"runs: {c.done}/{c.total} done, {c.running} running, {c.failed} failed{skipped}; elapsed "
            f"{time.perf_counter() - self.start:.0f}s, eta {eta_s}"
        )
        if self.live:
            if self._status is None:
                self._status = self.console.status(line)
                self._status.start()
            self._status.update(line)
            if c.finished:
                self._status.stop()
                self.console.print(line)
        elif c.finished or c.done + c.failed != getattr(self, "_last", -1):
            self._last = c.done + c.failed
            print(line, flush=True)

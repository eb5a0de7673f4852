"""Progress display for training: a rich progress bar on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tricklab.events import ORDER_PROGRESS, Callback, FitState
from tricklab.metrics import EPOCH, EPOCH_TIME, LR, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS


def format_row(row: dict) -> str:
    parts = [f"epoch {row[EPOCH]}"]
    for key, fmt in (
        (TRAIN_LOSS, ".4f"),
        (TRAIN_ACC, ".4f"),
        (VAL_LOSS, ".4f"),
        (VAL_ACC, ".4f"),
        (LR, ".3g"),
    ):
        if key in row:
            parts.append(f"{key} {row[key]:{fmt}}")
    parts.append(f"{row[EPOCH_TIME]:.1f}s")
    return "  ".join(parts)


class ProgressReporter(Callback):
    """Shows loss, accuracy and ETA while training. Refreshes at most a few times a second (no hot-path cost)."""

    order = ORDER_PROGRESS

    def __init__(self, console: Console | None = None, live: bool | None = None):
        self.console = console or Console(stderr=False)
        self.live = sys.stdout.isatty() if live is None else live
        self._progress: Progress | None = None
        self._last = 0.0

    def on_fit_start(self, state: FitState) -> None:
        if not self.live:
            return
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        total = state.steps_per_epoch * state.epochs if state.steps_per_epoch else None
        self._task = self._progress.add_task("train", total=total, epoch=1, epochs=state.epochs, loss="-")
        self._progress.start()

    def on_step_end(self, state: FitState) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if now - self._last > 0.25:
            self._last = now
            self._progress.update(self._task, completed=state.step, epoch=state.epoch, loss=f"{state.loss.item():.4f}")

    def on_epoch_end(self, state: FitState) -> None:
        line = format_row(state.metrics)
        if self._progress is not None:
            self._progress.update(self._task, completed=state.step)
            self._progress.console.print(line)
        else:
            print(line, flush=True)

    def on_fit_end(self, state: FitState) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class StepProgress(Callback):
    """``<label>: step N/M (P%), elapsed, eta`` on stderr about every 10% of ``total`` steps (and at the end), for
    work counted in steps (the doctor's probed run, the LR range test); usable as a callback or ``on_step``."""

    order = ORDER_PROGRESS

    def __init__(self, label: str, total: int, stream=None):
        self.label, self.total, self.stream = label, max(1, int(total)), stream or sys.stderr
        self.every = max(1, self.total // 10)
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int | None = None) -> None:
        total = total or self.total
        if done % self.every and done != total:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (total - done) if done else float("nan")
        print(
            f"{self.label}: step {done}/{total} ({done / total:.0%}), {elapsed:.0f}s, eta {eta:.0f}s",
            file=self.stream,
            flush=True,
        )

    def on_step_end(self, state: FitState) -> None:
        self(min(state.step, self.total), self.total)

"""Run directories: their names, the checks before writing into one, what they hold and how to find them again.

A run directory holds ``config.yaml`` (the resolved config), ``history.jsonl`` (one JSON object per epoch, appended
as each epoch ends by :class:`HistoryWriter`), ``metrics.json`` (final test metrics), ``scaler.json`` (the input
scaling fitted on the training split), ``metrics.csv`` and ``hparams.yaml`` (the history and the config in the
layout of Lightning's ``CSVLogger``, see :class:`CSVWriter`), ``model.safetensors`` (the final weights; safetensors
never runs code), ``checkpoints/`` (see :mod:`tricklab.engine.checkpoint`) and, for a run trained by several
processes under torchrun, ``distributed.json`` (their number and the job's id, see
:mod:`tricklab.engine.distributed`). ``train``, ``doctor`` and ``lr-find`` name their folders with
:func:`new_dir_name`. While a command writes a run directory it holds the folder's lock (``.tricklab.lock``, see
:mod:`tricklab.locks`): a second process is refused, never interleaved.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path

from tricklab.engine.checkpoint import latest_checkpoint, list_checkpoints
from tricklab.errors import TrickLabError
from tricklab.events import ORDER_HISTORY, Callback, FitState
from tricklab.locks import LOCK_NAME, check_free
from tricklab.outputs import atomic_write


class HistoryWriter(Callback):
    """Append each epoch's row to ``history.jsonl`` as soon as the epoch ends (a kill loses no epoch)."""

    order = ORDER_HISTORY

    def __init__(self, path: Path, member: int | None = None):
        self.path, self.member = path, member

    def on_epoch_end(self, state: FitState) -> None:
        row = state.metrics if self.member is None else dict(state.metrics, member=self.member)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


class CSVWriter(Callback):
    """Keep ``metrics.csv`` in the layout of Lightning's ``CSVLogger``: one row per epoch, columns ``epoch``, ``step``
    (optimizer steps taken so far), then the history's metrics in sorted order (``member`` too for an ensemble), an
    empty cell where a row has no value. Readable by anything that reads Lightning's logs
    (``pandas.read_csv(run_dir / "metrics.csv")``).

    Lightning sorts every column name, ``epoch`` and ``step`` among them, and numbers epochs from 0; here ``epoch`` and
    ``step`` come first and ``epoch`` is the history's (from 1), so that it matches ``history.jsonl``. The file is
    rewritten whole (atomically) after each epoch: a resumed run replaces the rows of the epochs it trains again, as
    ``history.jsonl`` does.
    """

    order = ORDER_HISTORY

    FIRST = ("epoch", "step")

    def __init__(self, path: Path, member: int | None = None):
        self.path, self.member = path, member

    def on_epoch_end(self, state: FitState) -> None:
        row = {"epoch": state.epoch, "step": state.step, **state.metrics}
        if self.member is not None:
            row["member"] = self.member
        kept = [r for r in read_csv_rows(self.path) if not _same_or_later(r, row)]
        rows = [*kept, {k: v for k, v in row.items() if isinstance(v, (int, float, str))}]
        atomic_write(self.path, csv_text(rows, self.FIRST).encode())


def _same_or_later(old: dict[str, str], new: dict) -> bool:
    """Whether ``old`` (a row read back) is of the same member as ``new`` and of its epoch or a later one."""
    same_member = old.get("member", "") == ("" if new.get("member") is None else str(new["member"]))
    try:
        return same_member and int(old.get("epoch") or 0) >= int(new["epoch"])
    except ValueError:
        return False


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` (none when there is no file yet)."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def csv_text(rows: list[dict], first: tuple[str, ...]) -> str:
    """``rows`` as CSV: the ``first`` columns, then every other key of any row, sorted; missing values empty."""
    keys = sorted({k for r in rows for k in r} - set(first))
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=[*first, *keys], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def new_dir_name(label: str, base: Path = Path("runs")) -> Path:
    """``base/<stamp>-<label>``, with ``-2``, ``-3``, ... if that folder exists already."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, i = base / f"{stamp}-{label}", 1
    while path.exists():
        i += 1
        path = base / f"{stamp}-{label}-{i}"
    return path


def is_empty(path: Path) -> bool:
    """Whether folder ``path`` holds nothing but, at most, a lock file (see :mod:`tricklab.locks`)."""
    return all(p.name == LOCK_NAME for p in path.iterdir())


def check_run_dir(path: Path) -> None:
    """Refuse to write into a folder that already holds a run or other files (a lone lock file is not a run)."""
    if path.exists() and (not path.is_dir() or not is_empty(path)):
        if path.is_dir():
            check_free(path)  # a run being written there now: name the process that writes it
        raise TrickLabError(
            f"--out {str(path)!r} already exists and is not empty; choose a new run directory "
            f"(or continue that run with --resume {str(path)!r})"
        )


CHECKPOINTS = "checkpoints"


def checkpoint_folder(run_dir: Path, member: int, members: int) -> Path:
    folder = Path(run_dir) / CHECKPOINTS
    return folder / f"member{member}" if members > 1 else folder


def run_checkpoints(run_dir: Path) -> list[Path]:
    """Every checkpoint folder of a run directory (all ensemble members)."""
    folder = Path(run_dir) / CHECKPOINTS
    subfolders = sorted(folder.glob("member*")) if folder.is_dir() else []
    return [c for f in (folder, *subfolders) for c in list_checkpoints(f)]


def find_resumable(base: Path = Path("runs")) -> Path:
    """``--resume auto``: the run directory under ``base`` whose newest valid checkpoint is the most recent."""
    best: tuple[float, Path] | None = None
    for run_dir in sorted(base.iterdir()) if base.is_dir() else []:
        for folder in {c.parent for c in run_checkpoints(run_dir)}:
            try:
                found = latest_checkpoint(folder)
            except TrickLabError:
                continue
            if found is not None:
                mtime = (found[0] / "MANIFEST.json").stat().st_mtime
                if best is None or mtime > best[0]:
                    best = (mtime, run_dir)
    if best is None:
        raise TrickLabError(f"--resume auto: no run directory under {str(base)!r} holds a valid checkpoint")
    return best[1]


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            return missing
        missing = p
    return missing


def discard(run_dir: Path, created: Path | None) -> None:
    """Remove what a run that failed on bad input wrote: the folders it created, or the files it put into
    the empty folder it was given."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for p in run_dir.iterdir():
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

"""A ``tricklab`` process that kills or slows itself at a chosen point, for the kill/resume and signal tests.

Run as ``python tricklab_child.py POINT tricklab-args...``: it installs the hook named by POINT, then runs
``tricklab.cli.main.main(args)`` exactly as ``python -m tricklab`` does. The hooks wrap tricklab functions
from outside (nothing in the library knows about them); ``os.kill(os.getpid(), SIGKILL)`` gives no chance
to clean up, exactly like ``kill -9``:

``none``         no hook
``step:N``       SIGKILL right after optimizer step N (mid-epoch)
``epoch-end:N``  SIGKILL at the end of epoch N: its row is in history.jsonl, its checkpoint is not written
``saved:N``      SIGKILL just after epoch N's checkpoint (and best copy) is in place
``save:N``       SIGKILL inside epoch N's checkpoint write: tensors and meta.json on disk, MANIFEST not
``final``        SIGKILL when model.safetensors is about to be written (after metrics.json)
``slow``         sleep 20 ms per step (so a test can signal the run while it trains)
``slow-save``    ``slow``, and once a stop signal has arrived, the checkpoint write blocks for 60 s after
                 writing its tensors (so a test can send the second signal during the save)

The parent side, used by the tests: :data:`BASE` arguments, :func:`child`, :func:`here` (the same command in the
test's own process, for what follows a kill: a resume, a reference run), the comparisons of run directories
:func:`same_weights` and :func:`history`, and :class:`CutAt` to cut an in-process run short.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

from tricklab.events import Callback

HERE = Path(__file__).resolve()

BASE = [
    "--set", "data.name=synthetic",
    "--set", "model.width=16",
    "--set", "model.depth=1",
    "--set", "data.batch_size=32",
    "--set", "train.threads=1",
    "--set", "train.device=cpu",
    "--set", "model.dropout=0.2",
    "--set", "optim.name=nesterov",
    "--set", "optim.lr=0.05",
    "--set", "schedule.name=onecycle",
    "--set", "averaging.ema=0.9",
]  # fmt: skip
STEPS_PER_EPOCH = 15  # 461 synthetic training examples, batches of 32


def child(point: str, args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    """Start ``tricklab args`` in a fresh interpreter with hook ``point`` (see the module docstring)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TRICKLAB_DATA=str(cwd / "cache"))
    return subprocess.Popen([sys.executable, str(HERE), point, *args], cwd=cwd, env=env, text=True, **popen)


def here(args: list[str], cwd: Path) -> tuple[int, str]:
    """``tricklab args`` in ``cwd`` in this process, with :func:`child`'s data folder: ``(exit code, stderr)``.

    For the runs that only read or continue what a killed child left (``--resume``, the uninterrupted reference):
    the same ``main`` as the child's, without the seconds a fresh interpreter spends importing torch."""
    from tricklab.cli.main import main

    err = io.StringIO()
    with (
        mock.patch.dict(os.environ, TRICKLAB_DATA=str(cwd / "cache")),
        contextlib.chdir(cwd),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(err),
    ):
        code = main(args)
    return code, err.getvalue()


def history(run_dir: Path) -> list[dict]:
    """history.jsonl's rows without their wall-clock times."""
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]


def same_weights(a: Path, b: Path) -> None:
    """Both run directories hold the same model*.safetensors files, byte for byte and tensor for tensor."""
    import torch
    from safetensors.torch import load_file

    names = sorted(f.name for f in a.glob("model*.safetensors"))
    assert names and names == sorted(f.name for f in b.glob("model*.safetensors"))
    for name in names:
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{name}:{k} differs"
        assert (a / name).read_bytes() == (b / name).read_bytes()


class Cut(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way out treats it as an error to clean up."""


class CutAt(Callback):
    """Raise :class:`Cut` at global step ``step`` (after it), or at the end of epoch ``epoch``."""

    def __init__(self, step: int | None = None, epoch: int | None = None, order: int = 0):
        self.at_step, self.at_epoch, self.order = step, epoch, order

    def on_step_end(self, state):
        if state.step == self.at_step:
            raise Cut

    def on_epoch_end(self, state):
        if state.epoch == self.at_epoch:
            raise Cut


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(point: str) -> None:
    from tricklab import runner as run
    from tricklab.data import download
    from tricklab.engine import checkpoint

    kind, _, arg = point.partition(":")
    n = int(arg) if arg else None
    cp = checkpoint.Checkpointer
    on_step_end, on_epoch_end, write_synced = cp.on_step_end, cp.on_epoch_end, checkpoint._write_synced

    if kind == "step":

        def step_hook(self, state):
            on_step_end(self, state)
            if state.step == n:
                _kill_self()

        cp.on_step_end = step_hook
    elif kind in ("epoch-end", "saved"):

        def epoch_hook(self, state):
            if kind == "epoch-end" and state.epoch == n:
                _kill_self()
            on_epoch_end(self, state)
            if state.epoch == n:
                _kill_self()

        cp.on_epoch_end = epoch_hook
    elif kind == "save":

        def write_hook(path, data):
            if path.name == checkpoint.MANIFEST and path.parent.name.startswith(f".tmp-epoch{n:04d}-"):
                _kill_self()
            write_synced(path, data)

        checkpoint._write_synced = write_hook
    elif kind == "final":
        atomic_write = download.atomic_write

        def final_hook(path, data):
            if path.name == "model.safetensors":
                _kill_self()
            atomic_write(path, data)

        run.atomic_write = final_hook
    elif kind in ("slow", "slow-save"):

        def slow_step(self, state):
            time.sleep(0.02)
            on_step_end(self, state)

        cp.on_step_end = slow_step
        if kind == "slow-save":

            def blocking_write(path, data):
                write_synced(path, data)
                if path.name == checkpoint.TENSORS and getattr(cp, "_signal_seen", None) is not None:
                    print("child: checkpoint write blocked", file=sys.stderr, flush=True)
                    time.sleep(60)

            handle = checkpoint.StopSignals._handle

            def seen(self, signum, frame):
                cp._signal_seen = signum
                handle(self, signum, frame)

            checkpoint.StopSignals._handle = seen
            checkpoint._write_synced = blocking_write
    elif kind != "none":
        raise SystemExit(f"unknown hook {point!r}")


if __name__ == "__main__":
    _install(sys.argv[1])
    from tricklab.cli.main import main

    sys.exit(main(sys.argv[2:]))

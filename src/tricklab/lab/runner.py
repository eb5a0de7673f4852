"""Run many training runs in parallel worker processes, surviving runs that fail or crash.

Workers are long-lived processes, ``processes × threads ≤ cores``, forked from multiprocessing's fork server, which
imports torch and tricklab's training modules once (:data:`PRELOAD`) for every pool of this process: a new worker,
or one that replaces a crashed worker, starts without importing torch again (a spawned process would). The fork
server is itself a fresh process, so a worker does not inherit the lab's threads or locks, as with ``spawn``; what
a forked worker would not see of the lab's process is handed to it: its environment variables as they are when the
worker starts (the server's are those of its own start), its working folder and ``sys.path`` (multiprocessing does).
Where the platform has no fork server (Windows), workers are spawned. The fork server stays until the process that
started it ends (a notebook's kernel keeps it between labs), holding one worker's memory with torch imported.
The main process hands each idle worker one run at a time, so it always knows which run a worker holds: a run
that raises is reported as failed with its error; a worker that dies (segfault, out of memory, killed) is
noticed, its run reported as failed, and a fresh worker takes its place. The other runs carry on.

A run function returns ``(metrics, history, config_hash)``: the hash (:func:`tricklab.lab.store.config_key`) of
the config it actually ran, which the results database checks before storing the result. Stopping is the main
process's decision: workers ignore SIGINT and SIGHUP (a terminal sends them to the whole process group), are
stopped by :meth:`WorkerPool.close`, and exit by themselves if the main process dies (each watches a pipe only the
main process holds open; it closes when that process ends, however it ends), so no worker outlives its lab.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tricklab.errors import TrickLabError
from tricklab.lab.costs import longest_first
from tricklab.lab.events import RunDone, RunEvent, RunFailed, RunStarted


class PoolLost(TrickLabError):
    """The executor itself died under the lab (Ray's raylet on this machine killed, say), not one of its runs: no
    run can go on. The lab puts its running runs back to pending and says so; rerunning the command redoes them."""


@dataclass(frozen=True)
class Task:
    key: tuple  # a RunKey: (study, variant, seed, dataset)
    config: dict[str, Any]
    plugins: tuple[tuple[str, str, str], ...] = ()  # (family, name, import path) to register in the worker first


@runtime_checkable
class Executor(Protocol):
    """What runs a lab's tasks: :class:`InProcess`, :class:`WorkerPool` or :class:`~tricklab.lab.ray_executor.RayPool`.

    Used as a context manager (entering starts the workers or joins Ray; leaving stops them). ``slots``: how many runs
    go at once (known for Ray once joined); ``describe()``: how the runs execute, in words, for the progress line;
    ``stopped``: what a stop signal did to its runs, in words (``"worker processes stopped; "``).
    ``run(tasks, on_event, refill=...)`` runs every task, the longest first, and reports each with a
    :data:`~tricklab.lab.events.RunEvent`; ``refill()``, when given, is asked for more tasks whenever none is waiting
    and a slot is free or a run has just ended; it returns when nothing is running, waiting or refilled.
    """

    slots: int
    stopped: str

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...

    def describe(self) -> str: ...

    def run(
        self,
        tasks: list[Task],
        on_event: Callable[[RunEvent], None],
        poll_s: float = ...,
        refill: Callable[[], list[Task]] | None = None,
    ) -> None: ...


def plan_workers(
    n_tasks: int,
    cores: int | None = None,
    processes: int | None = None,
    run_bytes: float | None = None,
    memory: int | None = None,
) -> tuple[int, int]:
    """``(processes, threads per process)`` with ``processes × threads ≤ cores``.

    Independent runs scale better across processes (one thread each) than across threads, so by default there
    is one process per core, no more than there are runs, and no more than fit in 80% of ``memory`` (the
    memory available, :func:`tricklab.host.available_memory`) at ``run_bytes`` each (the largest run's estimate,
    :func:`tricklab.lab.costs.run_bytes`); the cores left over become threads. ``processes`` (``--workers``)
    is taken as asked, within the cores."""
    cores = cores or os.cpu_count() or 1
    p = processes or cores
    p = max(1, min(p, cores, max(n_tasks, 1)))
    if processes is None and run_bytes and run_bytes == run_bytes and memory:
        p = max(1, min(p, int(0.8 * memory // run_bytes)))
    return p, max(1, cores // p)


def execute(config: dict[str, Any]) -> tuple[dict, list, str]:
    """Train one config (no run directory); return its metrics, history and the hash of the config it ran."""
    from tricklab.config import validate
    from tricklab.lab.store import config_key
    from tricklab.runner import run

    cfg = validate(config)
    result = run(cfg, write=False, record_divergence=True)
    return result.metrics, result.history, config_key(cfg.to_dict())


#: Imported once by the fork server, before it forks workers: torch and what a run needs, ``torch._dynamo`` included
#: (a torch optimizer imports it the first time one is built, and every run builds one).
PRELOAD = ("tricklab.lab.runner", "tricklab.runner", "torch._dynamo")


def start_method() -> str:
    """``"forkserver"`` where the platform has it (Linux, macOS), else ``"spawn"``."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def _watch_parent(alive: Any) -> None:
    """In a worker: exit as soon as the main process is gone (killed with SIGKILL, say), never linger. ``alive`` is
    the read end of a pipe whose write end only the main process holds: it reads end-of-file once that process
    has ended (or closed it)."""
    try:
        alive.recv()
    except (EOFError, OSError):
        pass
    os._exit(1)


def _worker(tasks: mp.Queue, results: mp.Queue, threads: int, fn: Callable, alive: Any, env: dict) -> None:
    for s in (signal.SIGINT, signal.SIGHUP):  # the main process decides when to stop, and stops us
        signal.signal(s, signal.SIG_IGN)
    os.environ.clear()  # the lab's environment now, not the fork server's from when it started
    os.environ.update(env)
    threading.Thread(target=_watch_parent, args=(alive,), daemon=True).start()
    import torch

    torch.set_num_threads(threads)
    while True:
        task = tasks.get()
        if task is None:
            return
        results.put(RunStarted(task.key))
        try:
            register_plugins(task.plugins)
            metrics, history, config_hash = fn(task.config)
            results.put(RunDone(task.key, metrics, history, config_hash))
        except BaseException as e:  # report everything, including SystemExit from deep inside a run
            tb = traceback.format_exc(limit=-3)
            results.put(RunFailed(task.key, f"{type(e).__name__}: {e}", tb))


def register_plugins(plugins: tuple[tuple[str, str, str], ...]) -> None:
    """In a worker: register the parent's Python-registered plugins again, by their import paths."""
    if not plugins:
        return
    from tricklab.catalog import family
    from tricklab.plugins import import_object

    for fam, name, path in plugins:
        family(fam).register(name, import_object(path, f"{fam} plugin {name!r}"), source="registered in Python")


class InProcess:
    """The lab's runs one after another in this process, with every core's threads: for plugins that worker
    processes cannot import (a model defined in a notebook cell or a script's ``__main__``; ``why`` says which, for
    the progress line). An :class:`Executor`; a run that raises is reported as failed and the others go on."""

    slots = 1
    stopped = ""

    def __init__(self, threads: int, fn: Callable[[dict], tuple[dict, list, str]] = execute, why: str = ""):
        self.threads, self.fn, self.why = threads, fn, why

    def describe(self) -> str:
        return f"in-process ({self.why})"

    def __enter__(self) -> InProcess:
        import torch

        self._threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc) -> None:
        import torch

        torch.set_num_threads(self._threads)

    def run(
        self,
        tasks: list[Task],
        on_event: Callable[[RunEvent], None],
        poll_s: float = 0.0,
        refill: Callable[[], list[Task]] | None = None,
    ) -> None:
        pending = longest_first(list(tasks))
        while pending or (refill is not None and (pending := longest_first(list(refill())))):
            task = pending.pop(0)
            on_event(RunStarted(task.key))
            try:
                metrics, history, config_hash = self.fn(task.config)
            except Exception as e:  # not BaseException: a stop signal ends the lab, not just this run
                on_event(RunFailed(task.key, f"{type(e).__name__}: {e}", traceback.format_exc(limit=-3)))
            else:
                on_event(RunDone(task.key, metrics, history, config_hash))


class WorkerPool:
    """``processes`` spawned workers with ``threads`` torch threads each: an :class:`Executor`."""

    stopped = "worker processes stopped; "

    def __init__(self, processes: int, threads: int, fn: Callable[[dict], tuple[dict, list, str]] = execute):
        self.processes, self.threads, self.fn = processes, threads, fn
        self.ctx = mp.get_context(start_method())
        if self.ctx.get_start_method() == "forkserver":
            self.ctx.set_forkserver_preload(list(PRELOAD))  # no effect once this process's fork server runs
        self.results = self.ctx.Queue()
        self.workers: list[dict[str, Any]] = []
        self._alive: tuple[Any, Any] | None = None  # (read, write) ends of the pipe the workers watch

    def __enter__(self) -> WorkerPool:
        self._alive = self.ctx.Pipe(duplex=False)  # see _watch_parent
        try:
            for _ in range(self.processes):
                self.workers.append(self._spawn())
        except BaseException:  # a signal while starting: stop the ones already started
            self.close(force=True)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close(force=exc[0] is not None)

    @property
    def slots(self) -> int:
        return self.processes

    def describe(self) -> str:
        return f"{self.processes} worker processes × {self.threads} thread(s)"

    def pids(self) -> list[int]:
        """The worker processes' ids."""
        return [w["proc"].pid for w in self.workers]

    def _spawn(self) -> dict[str, Any]:
        q = self.ctx.Queue()
        assert self._alive is not None, "a WorkerPool starts workers inside its with block"
        args = (q, self.results, self.threads, self.fn, self._alive[0], dict(os.environ))
        p = self.ctx.Process(target=_worker, args=args, daemon=True)
        p.start()
        return {"proc": p, "queue": q, "task": None}

    def close(self, force: bool = False) -> None:
        """Stop every worker: after its current run (a ``None`` task), or at once with ``force``; wait for them."""
        for w in self.workers:
            if force:
                w["proc"].terminate()
                w["queue"].cancel_join_thread()  # nobody will read what is left in it
            else:
                w["queue"].put(None)
        for w in self.workers:
            w["proc"].join(timeout=5 if not force else 2)
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join(timeout=5)
        for w in self.workers:
            w["queue"].close()
        self.workers = []
        if self._alive is not None:
            for end in self._alive:
                end.close()
            self._alive = None

    def run(
        self,
        tasks: list[Task],
        on_event: Callable[[RunEvent], None],
        poll_s: float = 0.2,
        refill: Callable[[], list[Task]] | None = None,
    ) -> None:
        """Run every task, the longest first (:func:`tricklab.lab.costs.longest_first`); ``on_event(event)`` for each
        run's start, end and failure (:data:`~tricklab.lab.events.RunEvent`).

        ``refill()``, when given, is asked for more tasks whenever none is waiting and a worker is idle or a run has
        just ended (its event already delivered): ``--seeds auto`` adds seeds to the comparisons still undecided
        this way, without waiting for the other studies' runs. The pool returns when nothing is running, waiting or
        refilled.
        """
        pending = longest_first(list(tasks))  # the longest first: no worker is left alone with one at the end
        in_flight = 0
        if not pending and refill is not None:
            pending.extend(longest_first(refill()))
        while pending or in_flight:
            if not pending and refill is not None and any(w["task"] is None for w in self.workers):
                pending.extend(longest_first(refill()))  # an idle worker: ask now, not only when the next run ends
            for w in self.workers:
                if w["task"] is None and pending:
                    w["task"] = pending.pop(0)
                    w["queue"].put(w["task"])
                    in_flight += 1
            try:
                msg = self.results.get(timeout=poll_s)
            except queue.Empty:
                msg = None
            if msg is not None:
                if not isinstance(msg, RunStarted):
                    self._release(msg.key)
                    in_flight -= 1
                on_event(msg)
                if not isinstance(msg, RunStarted) and not pending and refill is not None:
                    pending.extend(longest_first(refill()))
                continue
            for i, w in enumerate(self.workers):  # nothing arrived: did a worker die holding a task?
                if not w["proc"].is_alive():
                    task, code = w["task"], w["proc"].exitcode
                    self.workers[i] = self._spawn()
                    if task is not None:
                        in_flight -= 1
                        on_event(RunFailed(task.key, f"worker process died (exit code {code}) while running it"))
                        if not pending and refill is not None:
                            pending.extend(longest_first(refill()))

    def _release(self, key: tuple) -> None:
        for w in self.workers:
            if w["task"] is not None and w["task"].key == key:
                w["task"] = None
                return


def eta_seconds(done_times: list[float], remaining: int, processes: int) -> float:
    """Estimated seconds left: mean run time so far × remaining runs / processes."""
    if not done_times or remaining <= 0:
        return math.nan if remaining else 0.0
    return sum(done_times) / len(done_times) * remaining / processes

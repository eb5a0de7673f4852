"""Run the lab's runs as Ray tasks, on a local Ray instance or an existing cluster (``--executor ray``).

:class:`RayPool` has :class:`~tricklab.lab.runner.WorkerPool`'s interface, so the lab only chooses which pool to
build. Each (study, variant, seed) is one Ray task asking for ``num_cpus`` = the run's threads and one GPU when the
run's device is ``cuda``. Workers return ``(metrics, history, config_hash)`` and write nothing: the driver alone
writes ``results.sqlite``, so a cluster needs no shared file system. Workers read datasets from their own cache
(``data.dir``, else ``$TRICKLAB_DATA``, else ``~/.cache/tricklab``) or generate them (mnist1d, synthetic); a
driver's ``TRICKLAB_DATA`` is passed to the workers of a Ray instance on this machine.

Faults: a worker process or node lost mid-run is retried by Ray (``max_retries`` times, then the run is reported
failed); a run that raises is reported failed at once, never retried (``retry_exceptions=False``, and the task
catches its run's exception and returns it). Ray itself lost (the raylet on this machine died, or the GCS refuses
connections for :data:`GCS_LOST_S`) ends :meth:`RayPool.run` with :class:`~tricklab.lab.runner.PoolLost` before
Ray's own driver code would end this process with exit code 1 and no word.

The pool submits at most as many tasks as the cluster has room for (its CPUs ÷ the runs' threads, or
``max_in_flight``) and reports ``start`` on submission, so a started run is one the cluster can schedule now and the
progress line's "running" means running; the rest wait in the driver, where ``refill`` (``--seeds auto``) can still
add to them.

Ray is imported here only, on first use; it comes with ``pip install 'tricklab[ray]'``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from tricklab.errors import TrickLabError
from tricklab.lab.costs import longest_first
from tricklab.lab.events import RunDone, RunEvent, RunFailed, RunStarted
from tricklab.lab.runner import PoolLost, Task, execute, register_plugins

EXTRA = "pip install 'tricklab[ray]'"
DEFAULT_RETRIES = 3  # --max-retries: how often a run is retried after its worker process or node was lost
#: Seconds the GCS (the Ray head's directory of the cluster) may refuse connections before the lab stops: Ray's own
#: driver waits 60 s for it and then ends this process with exit code 1 and no word (``QuickExit``).
GCS_LOST_S = 5.0
MAX_RETRIES = 100
_LOCAL = ("127.0.0.1", "localhost", "local", "auto")


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise TrickLabError(f"--executor ray needs Ray: {EXTRA}") from None
    return ray


#: Seconds an ``--address`` has to answer (connect, then the first bytes of a reply) before the lab refuses it.
ANSWER_TIMEOUT_S = 10.0
#: What a gRPC client sends first (the HTTP/2 connection preface and an empty SETTINGS frame, RFC 9113 §3.4). Ray's
#: GCS and its Ray Client server are gRPC servers: they answer with their own SETTINGS frame at once.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def check_address(address: str | None, timeout_s: float | None = None) -> None:
    """Refuse at once, in one line, an address Ray would wait on for minutes: nothing listens there, or something
    accepts the connection but does not answer a gRPC client's first message within ``timeout_s`` (default
    :data:`ANSWER_TIMEOUT_S`); and a ``ray://`` address without Ray Client's ``grpcio`` installed."""
    if address is None or address == "auto":
        return
    host, sep, port = address.split("://")[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TrickLabError(f"--address = {address!r}: expected host:port, ray://host:port or auto")
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise TrickLabError(f"--address = {address!r}: a ray:// address needs Ray Client (grpcio): {EXTRA}")
    timeout_s = ANSWER_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    except OSError as e:  # refused, no route, or no reply to the connection itself within timeout_s
        why = f"no connection within {timeout_s:g} s" if isinstance(e, TimeoutError) else e.strerror or e
        raise TrickLabError(
            f"--address = {address!r}: nothing answers there ({why}); give the address of a running Ray cluster's "
            "head (`ray start --head` prints it), or no --address for a local instance"
        ) from None
    try:
        with conn:
            conn.sendall(_H2_PREFACE)
            answered = bool(conn.recv(64))
    except TimeoutError:
        answered = None
    except OSError:  # reset by the peer
        answered = False
    if not answered:
        how = f"does not answer within {timeout_s:g} s" if answered is None else "closes them without answering"
        raise TrickLabError(
            f"--address = {address!r}: it accepts connections but {how} (not a Ray cluster's head, or one too busy "
            "to serve); give the address `ray start --head` printed, or no --address for a local instance"
        )


def _run_one(fn: Callable, threads: int, plugins: tuple, config: dict) -> tuple:
    """In a Ray worker: one run, its outcome returned (``done`` or ``failed`` with the error), nothing written."""
    import torch

    torch.set_num_threads(threads)
    try:
        register_plugins(plugins)
        metrics, history, config_hash = fn(config)
    except (Exception, SystemExit) as e:  # a run that raises is a result (failed), not a lost worker to retry
        return ("failed", f"{type(e).__name__}: {e}", traceback.format_exc(limit=-3))
    return ("done", metrics, history, config_hash)


def _event(key: tuple, outcome: tuple) -> RunEvent:
    """The event of a run from what :func:`_run_one` returned (plain tuples cross the cluster)."""
    kind, *payload = outcome
    return RunDone(key, *payload) if kind == "done" else RunFailed(key, *payload)


def _is_local(address: str | None) -> bool:
    """Whether ``address`` names a Ray instance on this machine (``None``: one this pool starts)."""
    return address is None or address.split("://")[-1].rsplit(":", 1)[0] in _LOCAL


class RayPool:
    """The lab's runs as Ray tasks with ``threads`` CPUs each: an :class:`~tricklab.lab.runner.Executor`.

    ``address``: an existing cluster (``"auto"``: the one ``ray start`` started on this machine, ``"ray://host:10001"``,
    ``"host:6379"``); ``None`` starts a new local instance with ``cores`` CPUs (all of this machine's by default) and
    shuts it down on exit. A Ray already
    initialised in this process (``ray.init`` in a notebook) is used as it is and left running.
    """

    stopped = "Ray tasks cancelled; "

    def __init__(
        self,
        threads: int,
        fn: Callable[[dict], tuple[dict, list, str]] = execute,
        *,
        address: str | None = None,
        max_retries: int = DEFAULT_RETRIES,
        max_in_flight: int | None = None,
        cores: int | None = None,
    ):
        self.threads, self.fn, self.address, self.max_retries = threads, fn, address, max_retries
        self.max_in_flight, self.cores = max_in_flight, cores
        self.started_ray = False
        self.lost = False  # Ray on this machine died: nothing left to cancel or shut down cleanly
        self.gcs: tuple[str, int] | None = None  # the GCS's host and port, watched while runs are in flight
        self._gcs_down_since: float | None = None
        self._gcs_checked = 0.0
        self.slots = 1
        self.joined = False  # entered: the cluster's room (slots) is known
        self.in_flight: dict[Any, Task] = {}  # object ref → its task

    def __enter__(self) -> RayPool:
        ray = self.ray = require_ray()
        if not ray.is_initialized():
            env = {"TRICKLAB_DATA": os.environ["TRICKLAB_DATA"]} if "TRICKLAB_DATA" in os.environ else {}
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
            if self.address is None:
                kwargs["num_cpus"] = self.cores or os.cpu_count() or 1
            if env and _is_local(self.address):
                kwargs["runtime_env"] = {"env_vars": env}
            try:
                with _KeepSignalHandlers():  # ray.init installs its own SIGTERM handler; the lab's must stay
                    ray.init(address=self.address or "local", **kwargs)  # "local": a new one, never a stray
            except ConnectionError as e:
                raise TrickLabError(f"--address = {self.address!r}: no Ray cluster reachable there ({e})") from None
            self.started_ray = True
        try:
            cpus = int(ray.cluster_resources().get("CPU", 0))
            self.slots = max(1, cpus // max(1, self.threads))
            if self.max_in_flight:
                self.slots = min(self.slots, self.max_in_flight)
            self._remote = ray.remote(_run_one)
            self.gcs = _gcs_address(ray)
            self.joined = True
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        if not self.joined:  # before joining, its room is not known yet
            return f"Ray ({self.address or 'local instance'}) × {self.threads} thread(s) per run"
        where = f"cluster {self.address}" if self.address else "local instance"
        return f"Ray ({where}): up to {self.slots} run{'s' * (self.slots != 1)} at once × {self.threads} thread(s)"

    def close(self) -> None:
        """Cancel the runs still in flight (their workers are killed) and shut Ray down if this pool started it."""
        ray = self.ray
        for ref in list(self.in_flight) if not self.lost else ():
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished, or its worker already gone: nothing to cancel
                pass
        self.in_flight.clear()
        if self.started_ray:
            with _KeepSignalHandlers():
                ray.shutdown()
            self.started_ray = False

    def _check_fits(self, tasks: list[Task]) -> None:
        """Refuse runs no node of the cluster can hold (Ray would wait for such a node forever)."""
        nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        cpus = max((n.get("CPU", 0) for n in nodes), default=0)
        if cpus < self.threads:
            raise TrickLabError(
                f"--executor ray: a run has {self.threads} threads but the largest node has {cpus:g} CPUs; "
                f"use --workers to run more runs at once with fewer threads each"
            )
        gpu_runs = [t.key for t in tasks if t.config.get("train", {}).get("device") == "cuda"]
        if gpu_runs and not any(n.get("GPU", 0) >= 1 for n in nodes):
            run = "/".join(map(str, gpu_runs[0]))
            raise TrickLabError(f"--executor ray: run {run} has train.device = 'cuda' but the cluster has no GPU")

    def _submit(self, task: Task) -> Any:
        device = task.config.get("train", {}).get("device", "auto")
        return self._remote.options(
            num_cpus=self.threads,
            num_gpus=1 if device == "cuda" else 0,
            max_retries=self.max_retries,
            retry_exceptions=False,
            name="tricklab:" + "/".join(map(str, task.key)),
        ).remote(self.fn, self.threads, task.plugins, task.config)

    def run(
        self,
        tasks: list[Task],
        on_event: Callable[[RunEvent], None],
        poll_s: float = 0.2,
        refill: Callable[[], list[Task]] | None = None,
    ) -> None:
        """Run every task; ``on_event(event)`` for each run's start (on submission), end and failure.

        ``refill()`` is asked for more tasks whenever none is waiting and a slot is free or a run has just ended, as
        :meth:`WorkerPool.run` does. Returns when nothing is in flight, waiting or refilled.
        """
        ray = self.ray
        self._check_fits(tasks)
        pending = longest_first(list(tasks))
        if not pending and refill is not None:
            pending.extend(longest_first(refill()))
        while pending or self.in_flight:
            if not pending and refill is not None and len(self.in_flight) < self.slots:
                pending.extend(longest_first(refill()))  # a free slot: ask now, not only when the next run ends
            while pending and len(self.in_flight) < self.slots:
                task = pending.pop(0)
                self.in_flight[self._submit(task)] = task
                on_event(RunStarted(task.key))
            if not self.in_flight:
                continue
            ready = _signal_safe(ray.wait, list(self.in_flight), num_returns=1, timeout=poll_s)[0]
            if not ready:
                self._check_gcs()
            for ref in ready:
                task = self.in_flight.pop(ref)
                try:
                    event = _event(task.key, ray.get(ref))
                except ray.exceptions.LocalRayletDiedError:  # Ray on this machine is gone: no run can go on
                    self.in_flight[ref] = task  # still unfinished: the lab puts it back to pending
                    self.lost = True
                    raise PoolLost(
                        "Ray's raylet on this machine died (killed, out of memory, or one of Ray's agent processes "
                        "died and took it along); its runs were lost with it"
                    ) from None
                except ray.exceptions.RayTaskError as e:  # the task itself broke (e.g. ``fn`` would not unpickle)
                    first = (str(e.cause).strip().splitlines() or [""])[0]
                    event = RunFailed(task.key, f"{type(e.cause).__name__}: {first}", str(e))
                except ray.exceptions.RayError as e:  # the worker or node was lost more than max_retries times
                    first = (str(e).strip().splitlines() or [""])[0]
                    lost = f"Ray lost the run's worker ({type(e).__name__}) after {self.max_retries} retries: {first}"
                    event = RunFailed(task.key, lost)
                on_event(event)
                if not pending and refill is not None:
                    pending.extend(longest_first(refill()))

    def _check_gcs(self, every_s: float = 1.0) -> None:
        """Once a second: PoolLost once the GCS has refused connections for :data:`GCS_LOST_S` seconds (killed, or
        its machine gone), before Ray's driver code ends this process without a word."""
        now = time.monotonic()
        if self.gcs is None or now - self._gcs_checked < every_s:
            return
        self._gcs_checked = now
        try:
            socket.create_connection(self.gcs, timeout=every_s).close()
        except OSError as e:
            self._gcs_down_since = self._gcs_down_since or now
            if now - self._gcs_down_since >= GCS_LOST_S:
                self.lost = True
                host, port = self.gcs
                raise PoolLost(
                    f"Ray's GCS at {host}:{port} (the head of the Ray instance, which every worker reports to) "
                    f"has not answered for {now - self._gcs_down_since:.0f} s ({e.strerror or e}): it died or its "
                    "machine is gone; the runs in flight were lost with it"
                ) from None
        else:
            self._gcs_down_since = None


def _gcs_address(ray: Any) -> tuple[str, int] | None:
    """The host and port of the GCS this driver reports to, or None (a Ray Client driver talks to its server only)."""
    try:
        if ray.util.client.ray.is_connected():
            return None
        host, _, port = str(ray.get_runtime_context().gcs_address).rpartition(":")
        return (host.strip("[]"), int(port)) if host and port.isdigit() else None
    except Exception:  # a Ray without these attributes: no watch, Ray's own behaviour
        return None


def _signal_safe(call: Callable, *args, **kwargs) -> Any:
    """``call(*args, **kwargs)``, re-raising a signal handler's exception that Ray's C++ wrapped in a SystemError.

    ``ray.wait`` runs the signal handlers while it waits; what a handler raises (the lab's stop) comes out as
    ``SystemError: ... returned a result with an exception set`` with the handler's exception as its cause.
    """
    try:
        return call(*args, **kwargs)
    except SystemError as e:
        if isinstance(e.__cause__, BaseException) and not isinstance(e.__cause__, Exception):
            raise e.__cause__ from None
        raise


class _KeepSignalHandlers:
    """Put back SIGINT, SIGTERM and SIGHUP's handlers after the block (Ray's init and shutdown replace SIGTERM's)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __enter__(self) -> None:
        main = threading.current_thread() is threading.main_thread()
        self.saved = {s: signal.getsignal(s) for s in self.SIGNALS} if main else {}

    def __exit__(self, *exc) -> None:
        for s, handler in self.saved.items():
            if handler is not None:
                signal.signal(s, handler)

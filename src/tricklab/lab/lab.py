"""Run studies: every variant × seed as a run in the results database, then statistics and a report.

Rerunning the same command skips finished runs and runs the unfinished ones (pending, interrupted or failed);
a run whose resolved config changed is reset, never reused.

One lab process at a time owns a lab folder (:func:`tricklab.locks.folder_lock`, held from the first write to
the report): a second one is refused, naming the first. SIGTERM, SIGHUP and SIGINT stop the lab cleanly: the
workers are stopped, finished runs stay stored, running ones go back to pending (a rerun redoes them), and
:class:`LabInterrupted` says so in one line (exit code 128 + signal: 143, 129, 130).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tricklab.config import Config, load_config
from tricklab.errors import TrickLabError, echo
from tricklab.host import available_memory
from tricklab.lab.costs import run_bytes
from tricklab.lab.events import LabCounts, RunDone, RunEvent, RunKey, RunStarted
from tricklab.lab.ray_executor import RayPool  # imports Ray on use only
from tricklab.lab.request import EXECUTORS, LabOptions, check_executor, study_datasets  # noqa: F401  (options here too)
from tricklab.lab.runner import Executor, InProcess, PoolLost, Task, WorkerPool, execute, plan_workers
from tricklab.lab.spec import StudySpec
from tricklab.lab.store import Store, config_key
from tricklab.lab.studies import Study, describe_setup
from tricklab.locks import folder_lock

DB_NAME = "results.sqlite"
QUICK_SUBSET = 10000  # --quick: at most this many training examples on the big datasets


def run_key_hash(cfg: Config) -> str:
    """Hash of the resolved config without where it ran (threads, device): the identity of a lab run."""
    return config_key(cfg.to_dict())


def study_overrides(study: Study, variant_name: str, dataset: str, opts: LabOptions, seed: int) -> dict[str, Any]:
    o = study.overrides(study.variant(variant_name), dataset)
    if opts.epochs is not None:
        o["train.epochs"] = opts.epochs
    if opts.device is not None:
        o["train.device"] = opts.device
    if opts.quick:
        o["train.epochs"] = max(1, math.ceil(o.get("train.epochs", 5) / 4)) if opts.epochs is None else opts.epochs
        if dataset in ("mnist", "fashion-mnist"):
            o["data.subset"] = min(o.get("data.subset") or QUICK_SUBSET, QUICK_SUBSET)
        if o.get("averaging.swa_start"):
            o["averaging.swa_start"] = min(o["averaging.swa_start"], o["train.epochs"])
    o["train.seed"] = seed
    return o


def study_spec(study: Study, dataset: str, opts: LabOptions) -> StudySpec:
    """What the report needs to know of a study, stored beside its runs (so ``tricklab report`` needs no code)."""
    base = load_config(overrides=study_overrides(study, study.baseline, dataset, opts, 0))
    return StudySpec(
        name=study.name,
        doc=study.description(dataset, describe_setup(base, dataset)),
        dataset=dataset,
        baseline=study.baseline,
        variants=tuple(v.name for v in study.variants),
        baselines={v.name: study.baseline_of(v) for v in study.variants},
        overrides={
            v.name: study_overrides(study, v.name, dataset, opts, 0) | {"train.seed": "<seed>"} for v in study.variants
        },
        target_val_acc=study.target_val_acc.get(dataset),
        init_signal=study.init_signal,
        seeds=opts.seeds,
        margin=study.margin.get(dataset),
        sequential={"first": opts.seeds, "cap": opts.max_seeds} if opts.max_seeds else None,
        outcomes=list(study.outcomes) if study.outcomes != ("test_acc",) else None,
        aggregate=opts.aggregate,
    )


@dataclass
class Planned:
    study: Study
    dataset: str
    configs: dict[tuple, Config] = field(default_factory=dict)  # key → config


def plan(studies: list[Study], opts: LabOptions, threads: int = 1) -> list[Planned]:
    """Resolve and validate every run's config before anything runs (a bad study fails here, exit 2).

    A study's base or variant that sets ``data.name`` to another dataset than the lab's is refused: its runs
    would train on one dataset while the table and the database say another. So are variants that read other data
    (:func:`check_same_data`). A study run on several datasets (:func:`~tricklab.lab.request.study_datasets`) is
    planned once per dataset, each its own study instance: its runs are those it has when run on that dataset alone.
    """
    out = []
    for study in studies:
        for dataset in study_datasets(study, opts):
            p = Planned(study, dataset)
            for v in study.variants:
                for seed in range(opts.seeds):
                    p.configs[RunKey(study.name, v.name, seed, dataset)] = run_config(
                        study, v.name, dataset, opts, seed, threads
                    )
            check_same_data(study.name, {key[1]: cfg for key, cfg in p.configs.items()})
            out.append(p)
    return out


#: The keys of the data section that say which examples and classes a run reads. Variants of a study must agree on
#: them: their test accuracies are compared as if measured on one test set. The other keys (scale, batch_size,
#: subset, val_fraction) are how the same data is fed, which a study may vary (the scaling and batch-size studies do).
DATA_IDENTITY = ("name", "path", "kwargs", "dir")


def check_same_data(study: str, configs: dict[str, Config]) -> None:
    """Refuse a study whose variants (``configs``: variant → config) read different data, naming the first two that
    differ and the keys (:data:`DATA_IDENTITY`): their results would be compared as if on one dataset."""
    first: tuple[str, dict[str, Any]] | None = None
    for variant, cfg in configs.items():
        data = {k: getattr(cfg.data, k) for k in DATA_IDENTITY}
        if first is None:
            first = (variant, data)
            continue
        keys = [k for k in DATA_IDENTITY if data[k] != first[1][k]]
        if keys:
            differ = ", ".join(f"data.{k} = {echo(first[1][k])} vs {echo(data[k])}" for k in keys)
            raise TrickLabError(
                f"study {study!r}: variants {first[0]!r} and {variant!r} read different data ({differ}); the variants "
                f"of a study are compared on one test set, so they must agree on data.{', data.'.join(DATA_IDENTITY)} "
                "(make a study per dataset)"
            )


def run_config(study: Study, variant: str, dataset: str, opts: LabOptions, seed: int, threads: int) -> Config:
    """The validated config of one run (study, variant, seed) on ``dataset``: with ``threads`` threads, unless the
    study sets ``train.threads`` itself (:func:`study_threads`), which the run then keeps."""
    o = study_overrides(study, variant, dataset, opts, seed)
    asked = study_threads(study, variant, dataset)
    o["train.threads"] = threads if asked is None else fit_threads(asked, opts)
    try:
        cfg = load_config(overrides=o)
    except TrickLabError as e:
        raise TrickLabError(f"study {study.name!r}, variant {variant!r}: {e}") from None
    if cfg.data.name != dataset:
        given = "--dataset" if opts.dataset or opts.datasets else "the study's dataset"
        raise TrickLabError(
            f"study {study.name!r}, variant {variant!r}: data.name = {cfg.data.name!r} conflicts with "
            f"{given} {dataset!r}; a study's base and variants must not set data.name (name the dataset "
            "with the study's `dataset:` key or --dataset)"
        )
    return cfg


def study_threads(study: Study, variant: str, dataset: str) -> Any:
    """The ``train.threads`` a study sets for one variant on ``dataset`` (None: the lab chooses)."""
    return study.overrides(study.variant(variant), dataset).get("train.threads")


def lab_cores(opts: LabOptions) -> int:
    """The cores the lab shares among its runs: ``opts.cores``, else those this process may use."""
    from tricklab.engine.seed import usable_cores

    return opts.cores or usable_cores()


def fit_threads(asked: Any, opts: LabOptions) -> Any:
    """A study's own ``train.threads`` as the run gets it: 0 (every core) and counts above the lab's cores become
    the lab's cores (more threads than cores only wait for each other); anything else as asked (a bad value is
    refused by the config's own check)."""
    if isinstance(asked, bool) or not isinstance(asked, int) or asked < 0:
        return asked
    cores = lab_cores(opts)
    return cores if asked == 0 or asked > cores else asked


def threads_notes(studies: list[Study], opts: LabOptions) -> tuple[str, ...]:
    """One line per study whose ``train.threads`` the lab cannot give as asked, saying what its runs get and why."""
    notes = []
    cores = lab_cores(opts)
    for study in studies:
        dataset = opts.dataset or study.dataset
        asked = {study_threads(study, v.name, dataset) for v in study.variants} - {None}
        for t in sorted(a for a in asked if isinstance(a, int) and not isinstance(a, bool) and a > cores):
            notes.append(
                f"study {study.name!r} sets train.threads = {t}, but the lab has {cores} core{'s' * (cores != 1)}: "
                f"its runs use {cores} thread{'s' * (cores != 1)} (more threads than cores only wait for each other)"
            )
    return tuple(notes)


def widest_run(planned: list[Planned]) -> int:
    """The most threads any planned run of a study that sets ``train.threads`` asks for (0 if none sets it)."""
    return max(
        (
            cfg.train.threads
            for p in planned
            for key, cfg in p.configs.items()
            if study_threads(p.study, key[1], p.dataset) is not None
        ),
        default=0,
    )


@dataclass
class LabRun:
    out: Path
    done: int
    failed: int
    skipped: int
    wall_time_s: float
    failures: list[tuple[tuple, str]]
    finished: Any = None  # what ``run_lab(finish=...)`` returned


class LabInterrupted(TrickLabError):
    """The lab stopped on a signal: workers stopped, finished runs kept, running ones pending; exit 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class _Stop(BaseException):
    """Raised in the main thread by a stop signal; a BaseException, so that no ``except Exception`` (a run that
    fails in-process) swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopOnSignals:
    """While active (in the main thread; elsewhere it does nothing), SIGTERM, SIGHUP and SIGINT raise
    :class:`_Stop` once; later signals are ignored while the lab cleans up, which is bounded (workers are
    terminated, then killed). The previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __enter__(self) -> StopOnSignals:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
            raise _Stop(signum)


@dataclass(frozen=True)
class LabPlan:
    """What a lab will run, resolved and checked before its folder is touched: every run's config (per study), how
    many runs go at once and with how many threads each, the plugins workers register, and why the runs go in this
    process (``in_process``), if they must."""

    planned: list[Planned]
    processes: int
    threads: int
    plugins: tuple[tuple[str, str, str], ...]
    in_process: str | None
    notes: tuple[str, ...] = ()  # said once when the lab starts (a study's threads it cannot give as asked)


def plan_lab(studies: list[Study], opts: LabOptions) -> LabPlan:
    """Plan a lab: check the executor, resolve every run's config and fit the workers to the cores and memory.

    A bad study, option or plugin fails here in one line (exit 2), before anything is written. A study that sets
    ``train.threads`` keeps it (within the cores: :func:`fit_threads`), and fewer runs go at once so that
    processes × threads stays within the cores.
    """
    check_executor(opts)
    n_runs = sum(len(s.variants) * len(study_datasets(s, opts)) for s in studies) * opts.seeds
    processes, threads = plan_workers(n_runs, opts.cores, opts.workers)
    planned = plan(studies, opts, threads)
    if opts.workers is None and opts.executor == "process":  # no more processes than memory holds
        biggest = max((run_bytes(c.to_dict()) for p in planned for k, c in p.configs.items() if k[2] == 0), default=0)
        fitted = plan_workers(n_runs, opts.cores, None, biggest, available_memory())
        if fitted != (processes, threads):
            processes, threads = fitted
            planned = plan(studies, opts, threads)
    widest = widest_run(planned)
    if widest > threads and opts.workers is None:  # a study's own threads: fewer runs at once, as many cores
        processes = max(1, min(processes, lab_cores(opts) // widest))
        threads = max(1, lab_cores(opts) // processes)
        planned = plan(studies, opts, threads)
    plugins, in_process = plugins_for_workers(planned)
    if in_process and opts.executor == "ray":
        raise TrickLabError(f"executor 'ray': {in_process}; register it in an importable module")
    if in_process:  # one run at a time: each gets every core (the runs' configs say so, as their threads are)
        processes, threads = 1, opts.cores or os.cpu_count() or 1
        planned = plan(studies, opts, threads)
    return LabPlan(planned, processes, threads, plugins, in_process, threads_notes(studies, opts))


def run_lab(
    studies: list[Study],
    opts: LabOptions,
    out: str | Path,
    *,
    command: str = "",
    on_progress: Callable[[LabCounts], None] | None = None,
    fn: Callable = execute,
    finish: Callable[[Path], Any] | None = None,
) -> LabRun:
    """Run every unfinished run of ``studies`` into the database of lab directory ``out``: plan, schedule, finish.

    :func:`plan_lab` checks everything before the folder is created; :class:`Schedule` records each study's spec,
    queues the runs not done yet, runs them on the executor and records every :data:`~tricklab.lab.events.RunEvent`,
    handing ``on_progress`` a :class:`~tricklab.lab.events.LabCounts` after each; ``finish(out)`` (e.g. writing the
    report) runs last, its result in :attr:`LabRun.finished`. ``out`` is locked from its creation until ``finish``
    has returned. ``fn(config) -> (metrics, history, config_hash)`` trains one run (in a worker). A stop signal raises
    :class:`LabInterrupted` once the workers are stopped and the database says what ran.
    """
    lab = plan_lab(studies, opts)
    schedule = Schedule(lab, opts, Path(out), executor(opts, lab, fn), command=command, on_progress=on_progress)
    with folder_lock(schedule.out), StopOnSignals():
        try:
            schedule.run()
            result = schedule.result()
            if finish is not None:
                result.finished = finish(schedule.out)
            return result
        except _Stop as stop:
            raise LabInterrupted(schedule.stopped(stop.signum), stop.signum) from None


def executor(opts: LabOptions, lab: LabPlan, fn: Callable) -> Executor:
    """The executor that runs the lab's tasks: in this process, worker processes here, or Ray tasks."""
    if lab.in_process:
        return InProcess(lab.threads, fn, why=lab.in_process)
    if opts.executor == "ray":
        return RayPool(
            lab.threads,
            fn,
            address=opts.address,
            max_retries=opts.max_retries,
            max_in_flight=opts.workers,
            cores=opts.cores,
        )
    return WorkerPool(lab.processes, lab.threads, fn)


class Schedule:
    """A planned lab running into its database: saves each study's spec, queues the runs not done yet (``--seeds
    auto``: :class:`_Refill` queues more), runs them on ``pool`` and records each run event, keeping the counts that
    ``on_progress`` is handed (:class:`~tricklab.lab.events.LabCounts`)."""

    def __init__(
        self,
        lab: LabPlan,
        opts: LabOptions,
        out: Path,
        pool: Executor,
        *,
        command: str = "",
        on_progress: Callable[[LabCounts], None] | None = None,
    ):
        self.lab, self.opts, self.out, self.pool = lab, opts, out, pool
        self.command, self.on_progress = command, on_progress
        self.counts = LabCounts(processes=lab.processes, threads=lab.threads, executor=pool.describe())
        self.started: dict[tuple, float] = {}  # the runs running now → when they started
        self.failures: list[tuple[tuple, str]] = []
        self.specs: dict[tuple[str, str], StudySpec] = {}
        self.outstanding: dict[tuple[str, str], set[tuple]] = {}  # queued or running runs, per study
        self.t0, self.started_at = time.perf_counter(), time.time()
        self.store: Store | None = None

    def add(self, **deltas: int) -> None:
        """Add to counts (``total=3``, ``skipped=1``)."""
        self.counts = replace(self.counts, **{k: getattr(self.counts, k) + n for k, n in deltas.items()})

    def progress(self, **once: Any) -> None:
        """Hand the counts to ``on_progress``, with ``once`` (a note, the event, finished) for this call only."""
        if self.on_progress:
            self.on_progress(replace(self.counts, **once))

    def run(self) -> None:
        """Queue the runs not done, run them to the end (or a stop), and record the session in the database."""
        with Store(self.out / DB_NAME) as store:
            self.store = store
            for note in self.lab.notes:
                self.progress(note=note)
            tasks = self.queue(store)
            refill = None
            if self.opts.max_seeds:
                refill = _Refill(self)
                tasks = tasks or refill()
            record_signals(self.lab.planned, store)
            try:
                if tasks:
                    with self.pool as pool:  # Ray: how many runs at once is known once joined
                        self.counts = replace(self.counts, processes=pool.slots, executor=pool.describe())
                        try:
                            pool.run(tasks, self.on_event, refill=refill)
                        except PoolLost as e:  # before the pool closes: closing a dead Ray may end this process
                            raise PoolLost(self.lost(str(e))) from None
            finally:  # a stopped lab's session counts too: its finished runs took that time
                if self.counts.done or self.counts.failed:
                    from tricklab.lab.machine import machine_info

                    wall = time.perf_counter() - self.t0
                    store.record_session(self.command, self.started_at, wall, self.counts.done, machine_info())
            self.progress(finished=True)

    def queue(self, store: Store) -> list[Task]:
        """Save each study's spec and a row per run; the runs not done yet, as tasks (the done ones are skipped)."""
        tasks = []
        for p in self.lab.planned:
            sk = (p.study.name, p.dataset)
            self.specs[sk] = spec = study_spec(p.study, p.dataset, self.opts)
            self.outstanding[sk] = set()
            store.save_study(p.study.name, p.dataset, spec, self.command)
            for key, cfg in p.configs.items():
                row = store.ensure(*key, config=cfg.to_dict(), config_hash=run_key_hash(cfg))
                if row.status == "done":
                    self.add(skipped=1)
                else:
                    tasks.append(Task(key, cfg.to_dict(), self.lab.plugins))
                    self.outstanding[sk].add(key)
        self.add(total=len(tasks))
        return tasks

    def on_event(self, event: RunEvent) -> None:
        """Record one run's event in the database and the counts, then report progress."""
        key, store, c = event.key, self.store, self.counts
        assert store is not None
        if isinstance(event, RunStarted):
            store.mark_running(key)
            self.started[key] = time.perf_counter()
            self.counts = replace(c, running=c.running + 1)
        elif isinstance(event, RunDone):
            self.outstanding[(key[0], key[3])].discard(key)
            refused = store.mark_done(key, event.metrics, event.history, event.config_hash)
            if refused:
                self.failed(key, refused)
            else:
                took = time.perf_counter() - self.started.pop(key, time.perf_counter())
                self.counts = replace(c, done=c.done + 1, running=max(0, c.running - 1), times=(*c.times, took))
        else:
            self.outstanding[(key[0], key[3])].discard(key)
            store.mark_failed(key, event.error + ("\n" + event.detail if event.detail else ""))
            self.failed(key, event.error)
        self.progress(event=event)

    def failed(self, key: tuple, error: str) -> None:
        c = self.counts
        self.counts = replace(c, failed=c.failed + 1, running=max(0, c.running - (1 if key in self.started else 0)))
        self.started.pop(key, None)
        self.failures.append((key, error))

    def result(self) -> LabRun:
        c = self.counts
        return LabRun(self.out, c.done, c.failed, c.skipped, time.perf_counter() - self.t0, self.failures)

    def unfinished(self) -> set[tuple]:
        """Every run this session queued that has not ended: the database may already say "running" for one whose
        start a stop signal interrupted before :attr:`started` knew of it, so a stop checks them all (only rows
        still running change)."""
        return set(self.started).union(*self.outstanding.values())

    def stopped(self, signum: int) -> str:
        """After a stop signal (workers already stopped): put the running rows back to pending; the line to say."""
        name = signal.Signals(signum).name
        running = 0
        with Store(self.out / DB_NAME) as store:
            for key in self.unfinished():
                running += store.mark_unfinished(key, f"stopped by {name} while running; a rerun redoes it")
        c = self.counts
        left = max(0, c.total - c.done - c.failed - running)
        before = f" (+{c.skipped} done before)" if c.skipped else ""
        return (
            f"lab stopped by {name}: {c.done} finished run{'s' * (c.done != 1)} kept{before}, {running} running "
            f"run{'s' * (running != 1)} marked unfinished, {left} not started; {self.pool.stopped}rerun the same "
            f"command to finish them (lab folder {self.out})"
        )

    def lost(self, what: str) -> str:
        """The executor died (:class:`PoolLost`): put the running rows back to pending; the one line to say."""
        assert self.store is not None
        running = sum(self.store.mark_unfinished(key, f"{what}; a rerun redoes it") for key in self.unfinished())
        done = self.counts.done
        return (
            f"lab stopped: {what}; {done} finished run{'s' * (done != 1)} kept, {running} running "
            f"run{'s' * (running != 1)} put back to pending; rerun the same command to finish them (lab folder "
            f"{self.out})"
        )


class _Refill:
    """``--seeds auto``: when a study has no run queued or running, decide its comparisons so far
    (:func:`tricklab.lab.analysis.analyse`, sequential) and queue the seeds its undecided ones need next (up to
    the next look, for the variant and its baseline); a study with nothing more to run is closed. Seeds already in
    the database are reused, so a rerun of the same command continues where the last one stopped. A run that
    failed in this lab is not queued again (its comparison waits for the next rerun)."""

    def __init__(self, schedule: Schedule):
        self.schedule, lab = schedule, schedule.lab
        self.planned, self.specs, self.outstanding = lab.planned, schedule.specs, schedule.outstanding
        self.opts, self.threads, self.plugins = schedule.opts, lab.threads, lab.plugins
        self.store = schedule.store
        self.closed: set[tuple[str, str]] = set()
        self.queued: set[tuple] = {k for keys in self.outstanding.values() for k in keys}
        self.counted: set[tuple] = {k for p in self.planned for k in p.configs}  # the first look's runs: counted
        self.refreshed: set[tuple[str, str]] = set()

    def __call__(self) -> list[Task]:
        from tricklab.lab.analysis import seeds_to_run
        from tricklab.lab.results import study_result

        new: list[Task] = []
        for p in self.planned:
            sk = (p.study.name, p.dataset)
            if sk in self.closed or self.outstanding[sk]:
                continue
            if sk not in self.refreshed:
                self.refresh(p)
            found = study_result(self.store, *sk, self.specs[sk])
            stats, rows = found.stats, found.rows
            acc = "test_acc" in stats.outcomes  # the comparisons still open, of the outcomes the study judges
            open_ = [
                v.name
                for v in stats.variants
                if any(d and d.resolves == "next look" for d in [acc and v.decision, *v.speed_decisions.values()])
            ]
            done = {(r.variant, r.seed) for r in rows if r.status == "done"}
            added = []
            for variant, n in seeds_to_run(stats).items():
                for seed in range(n):
                    key = RunKey(p.study.name, variant, seed, p.dataset)
                    if (variant, seed) in done or key in self.queued:
                        continue
                    cfg = self.config(p, key)
                    self.store.ensure(*key, config=cfg.to_dict(), config_hash=run_key_hash(cfg))
                    added.append(Task(key, cfg.to_dict(), self.plugins))
                    self.queued.add(key)
                    self.outstanding[sk].add(key)
            if not added:
                self.closed.add(sk)
                continue
            self.schedule.add(total=len(added))
            top = max(t.key[2] for t in added) + 1
            self.note(
                f"seeds auto: {p.study.name} on {p.dataset}: {len(added)} more runs, up to {top} seeds, "
                f"for the {len(open_)} undecided comparison{'s' * (len(open_) != 1)} ({', '.join(open_)})"
            )
            new += added
        return new

    def config(self, p: Planned, key: tuple) -> Config:
        if key not in p.configs:
            p.configs[key] = run_config(p.study, key[1], p.dataset, self.opts, key[2], self.threads)
        return p.configs[key]

    def refresh(self, p: Planned) -> None:
        """Once per study, before its first analysis: the rows an earlier lab left beyond the first look are checked
        against today's configs (a changed config resets its row, never reused) and counted as already done."""
        sk = (p.study.name, p.dataset)
        self.refreshed.add(sk)
        cap, variants = self.opts.max_seeds or 0, set(self.specs[sk].variants)
        for r in self.store.rows(*sk):
            key = RunKey(p.study.name, r.variant, r.seed, p.dataset)
            if r.variant not in variants or r.seed >= cap or key in self.counted:
                continue
            cfg = self.config(p, key)
            if self.store.ensure(*key, config=cfg.to_dict(), config_hash=run_key_hash(cfg)).status == "done":
                self.counted.add(key)
                self.schedule.add(skipped=1)

    def note(self, text: str) -> None:
        self.schedule.progress(note=text)


SIGNAL_BATCH = 256


def plugins_for_workers(planned: list[Planned]) -> tuple[tuple[tuple[str, str, str], ...], str | None]:
    """How worker processes get the plugins the runs use: Python-registered ones are registered again in each
    worker from their import paths; an import path names its module itself, and the worker finds it declared
    there (``@tricklab.model``), or registered again under its path when only a registration in this process
    declared it. A plugin defined in ``__main__`` (a notebook cell, a script) cannot be imported by a worker: then
    the runs go in this process, and the second value says why (shown in the progress line)."""
    from tricklab.catalog import family
    from tricklab.plugins import declared_families, import_object, importable_path, is_import_path

    found: dict[tuple[str, str], str] = {}
    for p in planned:
        for cfg in p.configs.values():
            names = [("models", cfg.model.name), ("datasets", cfg.data.name)]
            names += [("callbacks", c.name) for c in cfg.callbacks]
            for fam, name in names:
                if (fam, name) in found:
                    continue
                if is_import_path(name):
                    if name.partition(":")[0] == "__main__":
                        return (), f"{fam[:-1]} {name!r} is defined in __main__; worker processes cannot import it"
                    marked = fam in declared_families(import_object(name, f"{fam} plugin {name!r}"))
                    found[(fam, name)] = "" if marked else name
                    continue
                entry = family(fam).entry(name)
                if not entry.source or entry.source.startswith("plugin "):  # built in, or an installed entry point
                    found[(fam, name)] = ""
                    continue
                path = importable_path(entry.obj)
                if path is None:
                    where = getattr(entry.obj, "__module__", "?")
                    return (), (f"{fam[:-1]} {name!r} is defined in {where}; worker processes cannot import it")
                found[(fam, name)] = path
    return tuple((fam, name, path) for (fam, name), path in found.items() if path), None


def record_signals(planned: list[Planned], store: Store) -> None:
    """For studies that ask for it: per-layer activation and gradient std at initialization, per variant (seed 0).

    Measured once in the main process on one training batch (tricklab.diagnostics.signal), stored beside the runs.
    """
    from tricklab.assembly import build_model, load_data
    from tricklab.diagnostics.signal import signal_profile

    for p in planned:
        if not p.study.init_signal:
            continue
        splits = None
        for key, cfg in p.configs.items():
            if key[2] != 0 or store.signal(key[0], key[1], key[3], run_key_hash(cfg)) is not None:
                continue
            splits = splits or load_data(cfg)
            model, _ = build_model(cfg, splits, cfg.train.seed)
            prof = signal_profile(model, splits.train.x[:SIGNAL_BATCH], splits.train.y[:SIGNAL_BATCH])
            store.save_signal(key[0], key[1], key[3], run_key_hash(cfg), prof.to_dict())


def command_line() -> str:
    return "tricklab " + " ".join(_quote(a) for a in sys.argv[1:])


def _quote(a: str) -> str:
    return a if a and all(c.isalnum() or c in "-_.=/:," for c in a) else "'" + a.replace("'", "'\\''") + "'"

"""Run studies: every variant × seed as a run in the results database, then statistics and a report.

Rerunning the same command skips finished runs and runs the unfinished ones (pending, interrupted or failed);
a run whose resolved config changed is reset, never reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tricklab.config import Config, load_config
from tricklab.errors import TrickLabError
from tricklab.lab.runner import InProcess, Task, WorkerPool, execute, plan_workers
from tricklab.lab.store import Store
from tricklab.lab.studies import Study

DB_NAME = "results.sqlite"
QUICK_SUBSET = 10000  # --quick: at most this many training examples on the big datasets


@dataclass(frozen=True)
class LabOptions:
    dataset: str | None = None  # None: each study's own
    seeds: int = 3
    epochs: int | None = None
    quick: bool = False
    workers: int | None = None
    cores: int | None = None


def run_key_hash(cfg: Config) -> str:
    """Hash of the resolved config without where it ran (threads, device): the identity of a lab run."""
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("threads", "device")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def study_overrides(study: Study, variant_name: str, dataset: str, opts: LabOptions, seed: int) -> dict[str, Any]:
    o = study.overrides(study.variant(variant_name), dataset)
    if opts.epochs is not None:
        o["train.epochs"] = opts.epochs
    if opts.quick:
        o["train.epochs"] = max(1, math.ceil(o.get("train.epochs", 5) / 4)) if opts.epochs is None else opts.epochs
        if dataset in ("mnist", "fashion-mnist"):
            o["data.subset"] = min(o.get("data.subset") or QUICK_SUBSET, QUICK_SUBSET)
        if o.get("averaging.swa_start"):
            o["averaging.swa_start"] = min(o["averaging.swa_start"], o["train.epochs"])
    o["train.seed"] = seed
    return o


def study_spec(study: Study, dataset: str, opts: LabOptions) -> dict[str, Any]:
    """What the report needs to know of a study, stored beside its runs (so ``tricklab report`` needs no code)."""
    return {
        "name": study.name,
        "doc": study.doc,
        "dataset": dataset,
        "baseline": study.baseline,
        "variants": [v.name for v in study.variants],
        "baselines": {v.name: study.baseline_of(v) for v in study.variants},
        "overrides": {
            v.name: study_overrides(study, v.name, dataset, opts, 0) | {"train.seed": "<seed>"} for v in study.variants
        },
        "target_val_acc": study.target_val_acc.get(dataset),
        "init_signal": study.init_signal,
        "seeds": opts.seeds,
    }


@dataclass
class Planned:
    study: Study
    dataset: str
    configs: dict[tuple, Config] = field(default_factory=dict)  # key → config


def plan(studies: list[Study], opts: LabOptions, threads: int = 1) -> list[Planned]:
    """Resolve and validate every run's config before anything runs (a bad study fails here, exit 2)."""
    out = []
    for study in studies:
        dataset = opts.dataset or study.dataset
        p = Planned(study, dataset)
        for v in study.variants:
            for seed in range(opts.seeds):
                o = study_overrides(study, v.name, dataset, opts, seed)
                o["train.threads"] = threads
                try:
                    cfg = load_config(overrides=o)
                except TrickLabError as e:
                    raise TrickLabError(f"study {study.name!r}, variant {v.name!r}: {e}") from None
                p.configs[(study.name, v.name, seed, dataset)] = cfg
        out.append(p)
    return out


@dataclass
class LabRun:
    out: Path
    done: int
    failed: int
    skipped: int
    wall_time_s: float
    failures: list[tuple[tuple, str]]


def run_lab(
    studies: list[Study],
    opts: LabOptions,
    out: str | Path,
    *,
    command: str = "",
    on_progress: Callable[[dict], None] | None = None,
    fn: Callable = execute,
) -> LabRun:
    """Run every unfinished run of ``studies`` into the database of lab directory ``out``."""
    n_runs = sum(len(s.variants) for s in studies) * opts.seeds
    processes, threads = plan_workers(n_runs, opts.cores, opts.workers)
    planned = plan(studies, opts, threads)  # validates everything before the folder is created
    plugins, in_process = plugins_for_workers(planned)
    if in_process:
        processes, threads = 1, opts.cores or os.cpu_count() or 1
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with Store(out / DB_NAME) as store:
        tasks, skipped = [], 0
        for p in planned:
            store.save_study(p.study.name, p.dataset, study_spec(p.study, p.dataset, opts), command)
            for key, cfg in p.configs.items():
                row = store.ensure(*key, config=cfg.to_dict(), config_hash=run_key_hash(cfg))
                if row.status == "done":
                    skipped += 1
                else:
                    tasks.append(Task(key, cfg.to_dict(), plugins))
        counts = {
            "total": len(tasks),
            "done": 0,
            "failed": 0,
            "running": 0,
            "skipped": skipped,
            "processes": processes,
            "threads": threads,
            "times": [],
            "executor": f"in-process ({in_process})" if in_process else f"{processes} worker processes × {threads} "
            "thread(s)",
        }
        started: dict[tuple, float] = {}
        failures: list[tuple[tuple, str]] = []

        def on_event(kind: str, key: tuple, *payload) -> None:
            if kind == "start":
                store.mark_running(key)
                started[key] = time.perf_counter()
                counts["running"] += 1
            elif kind == "done":
                store.mark_done(key, payload[0], payload[1])
                counts["done"] += 1
                counts["running"] = max(0, counts["running"] - 1)
                counts["times"].append(time.perf_counter() - started.pop(key, time.perf_counter()))
            else:
                store.mark_failed(key, payload[0] + ("\n" + payload[1] if len(payload) > 1 and payload[1] else ""))
                counts["failed"] += 1
                counts["running"] = max(0, counts["running"] - (1 if key in started else 0))
                started.pop(key, None)
                failures.append((key, payload[0]))
            if on_progress:
                on_progress(counts)

        record_signals(planned, store)
        if tasks:
            with InProcess(threads, fn) if in_process else WorkerPool(processes, threads, fn) as pool:
                pool.run(tasks, on_event)
        if on_progress:
            on_progress(counts | {"finished": True})
    return LabRun(out, counts["done"], counts["failed"], skipped, time.perf_counter() - start, failures)


SIGNAL_BATCH = 256


def plugins_for_workers(planned: list[Planned]) -> tuple[tuple[tuple[str, str, str], ...], str | None]:
    """How worker processes get the plugins the runs use: Python-registered ones are registered again in each
    worker from their import paths; an import path names its module itself. A plugin defined in ``__main__``
    (a notebook cell, a script) cannot be imported by a worker: then the runs go in this process, and the
    second value says why (shown in the progress line)."""
    from tricklab.catalog import family
    from tricklab.plugins import importable_path, is_import_path

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
                    found[(fam, name)] = ""
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

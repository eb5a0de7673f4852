"""The lab's results database: one SQLite file, one row per (study, variant, seed).

A row holds the run's config and its hash, its status (``pending`` → ``running`` → ``done`` | ``failed``),
its final metrics and per-epoch history (JSON), the error if it failed, and timings. Each change is committed
at once, so a lab killed at any moment loses at most the runs that were in flight; a lab stopped by a signal
puts its running rows back to ``pending`` with the reason. A row whose stored config hash differs from the one
asked for is reset: a changed config never reuses an old result, and a result is stored only into a row whose
config hash is the one the run was computed from (:meth:`Store.mark_done`). Each lab invocation adds a row to
``sessions`` (:meth:`Store.record_session`: its command, when it started, its wall time, the runs it finished and
the machine it ran on), so a report can say what the lab cost and where it ran; a database from before sessions
were recorded gets the empty table when opened.

A file that is not a readable database of this layout (truncated, corrupted, another program's), or a row
whose JSON is not what the lab wrote, is refused in one line naming the file and how to start afresh
(:class:`StoreError`, exit code 2), never with a traceback halfway through a lab or a report.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tricklab.errors import TrickLabError
from tricklab.lab.spec import StudySpec

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    study TEXT NOT NULL,
    variant TEXT NOT NULL,
    seed INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    metrics TEXT,
    history TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (study, variant, seed, dataset)
);
CREATE TABLE IF NOT EXISTS studies (
    study TEXT NOT NULL,
    dataset TEXT NOT NULL,
    spec TEXT NOT NULL,
    command TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (study, dataset)
);
CREATE TABLE IF NOT EXISTS signals (
    study TEXT NOT NULL,
    variant TEXT NOT NULL,
    dataset TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (study, variant, dataset)
);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    command TEXT NOT NULL,
    started_at REAL NOT NULL,
    wall_time_s REAL NOT NULL,
    runs_done INTEGER NOT NULL,
    machine TEXT NOT NULL
);
"""
TABLES = ("runs", "studies", "signals", "sessions")
# a database opened read-only must hold these; the others are read as empty when missing (older labs lack them)
REQUIRED_TABLES = ("runs", "studies")


@dataclass
class RunRow:
    study: str
    variant: str
    seed: int
    dataset: str
    config_hash: str
    config: dict[str, Any]
    status: str
    metrics: dict[str, Any] | None
    history: list[dict[str, Any]] | None
    error: str | None
    attempts: int
    started_at: float | None
    finished_at: float | None

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.study, self.variant, self.seed, self.dataset)


class StoreError(TrickLabError):
    """The results database cannot be used: unreadable, corrupt, or a row the lab did not write (exit code 2)."""


def config_key(config: dict[str, Any]) -> str:
    """Hash of a resolved config (``Config.to_dict()``) without where it ran (threads, device): a run's identity.
    Settings of :data:`tricklab.config.NEUTRAL_DEFAULTS` at their default are left out too."""
    from tricklab.config import without_neutral_defaults

    d = without_neutral_defaults(config)
    d["train"] = {k: v for k, v in d.get("train", {}).items() if k not in ("threads", "device")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _fraction(v: Any, nan: bool) -> bool:
    """An accuracy: a number in [0, 1] (NaN too when ``nan``)."""
    return _number(v) and (0 <= v <= 1 or (nan and math.isnan(v)))


def _loss(v: Any) -> bool:
    """A loss: a number ≥ 0, NaN or +inf (what a diverged run records)."""
    return _number(v) and not v < 0


def _seconds(v: Any) -> bool:
    return _number(v) and math.isfinite(v) and v >= 0


# what each number the lab stores may hold, and the words for it; a key that is absent (or None) is not checked
_RANGES = {
    "test_acc": (lambda v: _fraction(v, nan=False), "an accuracy in [0, 1]"),
    "best_val_acc": (lambda v: _fraction(v, nan=True), "an accuracy in [0, 1] or NaN"),
    "val_acc": (lambda v: _fraction(v, nan=True), "an accuracy in [0, 1] or NaN"),
    "train_acc": (lambda v: _fraction(v, nan=True), "an accuracy in [0, 1] or NaN"),
    "member_test_acc_mean": (lambda v: _fraction(v, nan=True), "an accuracy in [0, 1] or NaN"),
    "test_loss": (_loss, "a loss ≥ 0, NaN or inf"),
    "val_loss": (_loss, "a loss ≥ 0, NaN or inf"),
    "train_loss": (_loss, "a loss ≥ 0, NaN or inf"),
    "wall_time_s": (_seconds, "a finite number of seconds ≥ 0"),
    "epoch_time_s": (_seconds, "a finite number of seconds ≥ 0"),
    "epoch": (_count, "an integer ≥ 0"),
    "epochs_run": (_count, "an integer ≥ 0"),
    "steps": (_count, "an integer ≥ 0"),
    "member": (_count, "an integer ≥ 0"),
    "ensemble": (_count, "an integer ≥ 0"),
    "diverged_members": (_count, "an integer ≥ 0"),
}


def _check_ranges(where: str, d: dict) -> str | None:
    for k, (ok, allowed) in _RANGES.items():
        v = d.get(k)
        if v is not None and not ok(v):
            return f"{where}{k}: expected {allowed}, got {v!r}"[:200]
    return None


def _check_metrics(m: Any) -> str | None:
    if m is None:
        return None
    if not isinstance(m, dict):
        return f"metrics: expected a JSON object, got {type(m).__name__}"
    for k in ("test_acc", "best_val_acc", "wall_time_s"):
        if k in m and not (_number(m[k]) or m[k] is None):
            return f"metrics.{k}: expected a number, got {m[k]!r}"[:200]
    if "test_acc" in m and m["test_acc"] is None:
        return "metrics.test_acc: expected a number, got None"
    return _check_ranges("metrics.", m)


def _check_history(h: Any) -> str | None:
    if h is None:
        return None
    if not isinstance(h, list) or not all(isinstance(r, dict) for r in h):
        return "history: expected a JSON list of objects"
    for i, r in enumerate(h):
        for k in ("epoch", "val_acc", "member"):
            if k in r and not _number(r[k]):
                return f"history[{i}].{k}: expected a number, got {r[k]!r}"[:200]
        if "val_acc" in r and "epoch" not in r:
            return f"history[{i}]: val_acc without its epoch"
        problem = _check_ranges(f"history[{i}].", r)
        if problem:
            return problem
    return None


def _check_spec(spec: Any) -> str | None:
    if not isinstance(spec, dict):
        return f"spec: expected a JSON object, got {type(spec).__name__}"
    variants, baselines = spec.get("variants"), spec.get("baselines")
    if not isinstance(variants, list) or not variants or not all(isinstance(v, str) for v in variants):
        return "spec.variants: expected a non-empty list of names"
    if not isinstance(baselines, dict) or any(baselines.get(v) not in variants for v in variants):
        return "spec.baselines: expected each variant's baseline, itself a variant"
    if spec.get("baseline") not in variants:
        return "spec.baseline: expected one of the variants"
    target = spec.get("target_val_acc")
    if target is not None and not _fraction(target, nan=False):
        return f"spec.target_val_acc: expected an accuracy in [0, 1], got {target!r}"[:200]
    overrides = spec.get("overrides", {})
    if not isinstance(overrides, dict) or not all(isinstance(o, dict) for o in overrides.values()):
        return "spec.overrides: expected an object of objects"
    if not isinstance(spec.get("doc", ""), str):
        return "spec.doc: expected a string"
    return None


def _check_machine(machine: Any) -> str | None:
    if not isinstance(machine, dict):
        return f"machine: expected a JSON object, got {type(machine).__name__}"
    for k, v in machine.items():
        if not isinstance(v, (str, int, float, bool, type(None))):
            return f"machine.{k}: expected a string, number or null, got {type(v).__name__}"[:200]
    return None


def _check_session(command: Any, started_at: Any, wall_time_s: Any, runs_done: Any) -> str | None:
    if not isinstance(command, str):
        return f"command: expected a string, got {type(command).__name__}"
    for k, t in (("started_at", started_at), ("wall_time_s", wall_time_s)):
        if not (_number(t) and math.isfinite(t) and t >= 0):
            return f"{k}: expected a finite number ≥ 0, got {t!r}"[:200]
    if not (isinstance(runs_done, int) and not isinstance(runs_done, bool) and runs_done >= 0):
        return f"runs_done: expected a count ≥ 0, got {runs_done!r}"[:200]
    return None


def _check_signal(data: Any) -> str | None:
    if not isinstance(data, dict) or not isinstance(data.get("forward_std"), list):
        return "signal: expected an object with a forward_std list"
    if not all(_loss(v) for v in data["forward_std"]):
        return "signal.forward_std: expected numbers ≥ 0 (NaN or inf where the signal blew up)"
    return None


class Store:
    """The SQLite database of a lab directory (``results.sqlite``); used from the lab's main process only.

    Every failure of SQLite and every row that does not hold what the lab writes raise :class:`StoreError`.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        self.db = None
        self.readonly = readonly
        self._tables: set[str] = set(TABLES)
        _check_file(self.path, readonly)
        with self._errors():
            if readonly:
                self.db = _connect_readonly(self.path)
            else:
                self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit; explicit txns
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
            problems = [r[0] for r in self.db.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError(f"integrity check failed: {'; '.join(map(str, problems))[:200]}")
            if not readonly:
                self.db.executescript(SCHEMA)
            columns = _columns(self.db)
            self._tables = {t for t, found in columns.items() if found}
            missing = [t for t in REQUIRED_TABLES if t not in self._tables]
            if missing:
                raise sqlite3.DatabaseError(f"no {' or '.join(missing)} table: not the schema tricklab creates")
            for table, found in columns.items():  # another program's tables of the same names?
                if found and found != _SCHEMA_COLUMNS[table]:
                    raise sqlite3.DatabaseError(f"table {table} has columns {', '.join(found)[:120]}")

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _errors(self):
        return _SqliteErrors(self.path, self)

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._errors():
            return self.db.execute(sql, args)

    def _fetch(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._errors():
            return self.db.execute(sql, args).fetchall()

    def _bad(self, where: str, problem: str) -> StoreError:
        return StoreError(
            f"{self.path}: {where} is not what tricklab wrote ({problem}); move it away to start afresh "
            f"({_move_away(self.path)}: every run is then recomputed)"
        )

    def _json(self, text: Any, where: str, check=None) -> Any:
        if text is None:
            return None
        try:
            value = json.loads(text)
        except (TypeError, ValueError) as e:
            raise self._bad(where, f"bad JSON: {str(e)[:100]}") from None
        problem = check(value) if check else None
        if problem:
            raise self._bad(where, problem)
        return value

    def ensure(self, study: str, variant: str, seed: int, dataset: str, config: dict, config_hash: str) -> RunRow:
        """Return the row for this run, creating it (pending) or resetting it when the config changed."""
        row = self.get(study, variant, seed, dataset)
        if row is None or row.config_hash != config_hash:
            self._exec(
                "INSERT OR REPLACE INTO runs (study, variant, seed, dataset, config_hash, config, status, attempts) "
                "VALUES (?, ?, ?, ?, ?, ?, 'pending', 0)",
                (study, variant, seed, dataset, config_hash, json.dumps(config)),
            )
            row = self.get(study, variant, seed, dataset)
        return row

    def mark_running(self, key: tuple) -> None:
        self._exec(
            "UPDATE runs SET status='running', attempts=attempts+1, started_at=?, error=NULL "
            "WHERE study=? AND variant=? AND seed=? AND dataset=?",
            (time.time(), *key),
        )

    def mark_done(self, key: tuple, metrics: dict, history: list, config_hash: str) -> str | None:
        """Store a finished run's result, only if the row still holds the config it was computed from.

        ``config_hash``: the :func:`config_key` of the config the worker ran. Returns None when stored; else the
        row is marked failed (so a rerun recomputes it) and the error is returned.
        """
        cur = self._exec(
            "UPDATE runs SET status='done', metrics=?, history=?, error=NULL, finished_at=? "
            "WHERE study=? AND variant=? AND seed=? AND dataset=? AND config_hash=?",
            (json.dumps(metrics), json.dumps(history), time.time(), *key, config_hash),
        )
        if cur.rowcount == 1:
            return None
        held = self._fetch(
            "SELECT config_hash FROM runs WHERE study=? AND variant=? AND seed=? AND dataset=?", tuple(key)
        )
        error = (
            f"result not stored: it was computed from config {config_hash} but the row holds config "
            f"{held[0][0] if held else '(no row)'} (was the lab folder written by another process?); "
            "rerun to recompute it"
        )
        self.mark_failed(key, error)
        return error

    def mark_failed(self, key: tuple, error: str) -> None:
        self._exec(
            "UPDATE runs SET status='failed', error=?, finished_at=? "
            "WHERE study=? AND variant=? AND seed=? AND dataset=?",
            (error, time.time(), *key),
        )

    def mark_unfinished(self, key: tuple, reason: str) -> bool:
        """Put a running row back to ``pending`` (a rerun redoes it), saying why it did not finish; whether it was
        running."""
        cur = self._exec(
            "UPDATE runs SET status='pending', error=?, finished_at=NULL "
            "WHERE study=? AND variant=? AND seed=? AND dataset=? AND status='running'",
            (reason, *key),
        )
        return cur.rowcount > 0

    def get(self, study: str, variant: str, seed: int, dataset: str) -> RunRow | None:
        rows = self._select("WHERE study=? AND variant=? AND seed=? AND dataset=?", (study, variant, seed, dataset))
        return rows[0] if rows else None

    def rows(self, study: str | None = None, dataset: str | None = None) -> list[RunRow]:
        where, args = [], []
        if study is not None:
            where.append("study=?")
            args.append(study)
        if dataset is not None:
            where.append("dataset=?")
            args.append(dataset)
        return self._select(("WHERE " + " AND ".join(where)) if where else "", tuple(args))

    def _select(self, where: str, args: tuple) -> list[RunRow]:
        found = self._fetch(
            "SELECT study, variant, seed, dataset, config_hash, config, status, metrics, history, error, attempts, "
            f"started_at, finished_at FROM runs {where} ORDER BY study, dataset, variant, seed",
            args,
        )
        out = []
        for r in found:
            name = f"run {'/'.join(map(str, r[:4]))}"
            if not (isinstance(r[2], int) and all(isinstance(x, str) for x in (r[0], r[1], r[3], r[4]))):
                raise self._bad(name, "wrong column types")
            if not (_count(r[2]) and _count(r[10])):
                raise self._bad(name, f"seed {r[2]!r} and attempts {str(r[10])[:20]!r}: expected integers ≥ 0")
            if r[6] not in ("pending", "running", "done", "failed"):
                raise self._bad(name, f"unknown status {str(r[6])[:40]!r}")
            config = self._json(r[5], name, lambda c: None if isinstance(c, dict) else "config: not a JSON object")
            metrics = self._json(r[7], name, _check_metrics)
            if r[6] == "done" and (metrics is None or "test_acc" not in metrics):
                raise self._bad(name, "a done run without metrics.test_acc")
            history = self._json(r[8], name, _check_history)
            times_ok = all(t is None or _number(t) and math.isfinite(t) for t in r[11:13])
            if not times_ok or not isinstance(r[10], int) or not isinstance(r[9], (str, type(None))):
                raise self._bad(name, "wrong column types")
            out.append(RunRow(r[0], r[1], r[2], r[3], r[4], config, r[6], metrics, history, r[9], r[10], r[11], r[12]))
        return out

    def save_study(self, study: str, dataset: str, spec: StudySpec | dict, command: str) -> None:
        stored = spec.to_dict() if isinstance(spec, StudySpec) else spec
        self._exec(
            "INSERT OR REPLACE INTO studies (study, dataset, spec, command, updated_at) VALUES (?, ?, ?, ?, ?)",
            (study, dataset, json.dumps(stored), command, time.time()),
        )

    def studies(self) -> list[tuple[str, str, StudySpec, str]]:
        found = self._fetch("SELECT study, dataset, spec, command FROM studies ORDER BY updated_at, study")
        out = []
        for s, d, spec, cmd in found:
            name = f"study {s}/{d}"
            if not all(isinstance(x, str) for x in (s, d, cmd)):
                raise self._bad(name, "wrong column types")
            out.append((s, d, StudySpec.from_dict(self._json(spec, name, _check_spec)), cmd))
        return out

    def save_signal(self, study: str, variant: str, dataset: str, config_hash: str, data: dict) -> None:
        self._exec(
            "INSERT OR REPLACE INTO signals (study, variant, dataset, config_hash, data) VALUES (?, ?, ?, ?, ?)",
            (study, variant, dataset, config_hash, json.dumps(data)),
        )

    def signal(self, study: str, variant: str, dataset: str, config_hash: str) -> dict | None:
        if "signals" not in self._tables:
            return None
        found = self._fetch(
            "SELECT data FROM signals WHERE study=? AND variant=? AND dataset=? AND config_hash=?",
            (study, variant, dataset, config_hash),
        )
        return self._json(found[0][0], f"signal {study}/{variant}/{dataset}", _check_signal) if found else None

    def record_session(
        self, command: str, started_at: float, wall_time_s: float, runs_done: int, machine: dict
    ) -> None:
        """Add one lab invocation: its command line, start (unix seconds), wall time (s), runs it finished, and
        the machine it ran on (:func:`tricklab.lab.machine.machine_info`: names → strings or numbers).

        A bad argument is a bug of the caller: ``ValueError`` naming it, nothing written.
        """
        problem = _check_session(command, started_at, wall_time_s, runs_done) or _check_machine(machine)
        if problem:
            raise ValueError(f"record_session: {problem}")
        self._exec(
            "INSERT INTO sessions (command, started_at, wall_time_s, runs_done, machine) VALUES (?, ?, ?, ?, ?)",
            (command, float(started_at), float(wall_time_s), runs_done, json.dumps(machine, sort_keys=True)),
        )

    def sessions(self) -> list[dict[str, Any]]:
        """Every recorded lab invocation, oldest first: dicts of command, started_at, wall_time_s, runs_done and
        machine (none for a lab from before sessions were recorded)."""
        if "sessions" not in self._tables:
            return []
        found = self._fetch(
            "SELECT id, command, started_at, wall_time_s, runs_done, machine FROM sessions ORDER BY started_at, id"
        )
        out = []
        for i, command, started_at, wall_time_s, runs_done, machine in found:
            name = f"session {i}"
            problem = _check_session(command, started_at, wall_time_s, runs_done)
            if problem:
                raise self._bad(name, problem)
            out.append(
                {
                    "command": command,
                    "started_at": float(started_at),
                    "wall_time_s": float(wall_time_s),
                    "runs_done": runs_done,
                    "machine": self._json(machine, name, _check_machine) or {},
                }
            )
        return out


def _columns(db: sqlite3.Connection) -> dict[str, list[str]]:
    """Each table of the lab's schema → its column names in ``db``."""
    return {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")] for t in TABLES}


def _schema_columns() -> dict[str, list[str]]:
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA)
        return _columns(db)
    finally:
        db.close()


_SCHEMA_COLUMNS = _schema_columns()


_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _check_file(path: Path, readonly: bool) -> None:
    """Refuse what SQLite must not be given: a folder, a device or FIFO (reading ``/dev/zero`` makes SQLite create
    ``/dev/zero-journal``), a link when writing, or, when only reading, a missing or empty file (SQLite would
    read it as an empty database, and a report of it would replace a good one with an empty page)."""
    try:
        link = os.lstat(path)
        st = os.stat(path)
    except FileNotFoundError:
        if readonly:
            raise StoreError(f"{path}: no such results database") from None
        if os.path.lexists(path):
            raise StoreError(f"{path}: is a broken symbolic link, not a results database; remove it") from None
        return
    except OSError as e:
        raise StoreError(f"{path}: cannot read or write the results database ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{path}: is a folder, not a results database; move it away to start afresh")
    if not stat.S_ISREG(st.st_mode):
        what = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        via = " (through a symbolic link)" if stat.S_ISLNK(link.st_mode) else ""
        raise StoreError(f"{path}: is {what}{via}, not a results database file; move it away to start afresh")
    if not readonly and stat.S_ISLNK(link.st_mode):
        raise StoreError(
            f"{path}: is a symbolic link; the lab writes its results database only as a regular file in its "
            f"folder (copy the database there, or move the link away to start afresh)"
        )
    if readonly and st.st_size == 0:
        raise StoreError(
            f"{path}: is empty (0 bytes), not a tricklab results database; move it away to start afresh "
            f"({_move_away(path)}: every run is then recomputed)"
        )


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """Open ``path`` for reading only: nothing is created beside it and nothing in it changes.

    A database without a write-ahead log beside it was closed cleanly by its last writer, and the commands that
    read it hold or check the lab folder's lock (:mod:`tricklab.locks`), so it is read as immutable: SQLite then
    takes no locks and creates no ``-shm``/``-wal`` files (it would leave them behind a read-only connection, and
    cannot create them at all in a read-only folder, e.g. a published lab). With a log beside it (a writer at work,
    or one that was killed) it is opened ``mode=ro``, so the log's committed transactions are read too.
    """
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    if not os.path.lexists(f"{path}-wal"):
        return sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)
    return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)


def _move_away(path: Path) -> str:
    return f"mv {shlex.quote(str(path))} {shlex.quote(str(path) + '.bad')}"


class _SqliteErrors:
    """Turn an SQLite failure into one line naming the file and what to do (closing the connection)."""

    def __init__(self, path: Path, store: Store):
        self.path, self.store = path, store

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, e, tb) -> bool:
        if kind is None or not issubclass(kind, sqlite3.Error):
            return False
        text = str(e)
        self.store.close()
        if "locked" in text or "busy" in text:
            raise StoreError(
                f"{self.path}: the database is busy ({text}); another process holds it, try again later"
            ) from None
        if any(w in text for w in ("readonly", "unable to open", "disk I/O", "full", "permission")):
            raise StoreError(f"{self.path}: cannot read or write the results database ({text})") from None
        raise StoreError(
            f"{self.path}: not a readable tricklab results database ({text[:200]}); move it away to start afresh "
            f"({_move_away(self.path)}: every run is then recomputed)"
        ) from None

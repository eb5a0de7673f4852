"""The lab's results database: one SQLite file, one row per (study, variant, seed).

A row holds the run's config and its hash, its status (``pending`` → ``running`` → ``done`` | ``failed``),
its final metrics and per-epoch history (JSON), the error if it failed, and timings. Each change is committed
at once, so a lab killed at any moment loses at most the runs that were in flight. A row whose stored config
hash differs from the one asked for is reset: a changed config never reuses an old result.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
"""


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


class Store:
    """The SQLite database of a lab directory (``results.sqlite``); used from the lab's main process only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit; explicit transactions
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ensure(self, study: str, variant: str, seed: int, dataset: str, config: dict, config_hash: str) -> RunRow:
        """Return the row for this run, creating it (pending) or resetting it when the config changed."""
        row = self.get(study, variant, seed, dataset)
        if row is None or row.config_hash != config_hash:
            self.db.execute(
                "INSERT OR REPLACE INTO runs (study, variant, seed, dataset, config_hash, config, status, attempts) "
                "VALUES (?, ?, ?, ?, ?, ?, 'pending', 0)",
                (study, variant, seed, dataset, config_hash, json.dumps(config)),
            )
            row = self.get(study, variant, seed, dataset)
        return row

    def mark_running(self, key: tuple) -> None:
        self.db.execute(
            "UPDATE runs SET status='running', attempts=attempts+1, started_at=?, error=NULL "
            "WHERE study=? AND variant=? AND seed=? AND dataset=?",
            (time.time(), *key),
        )

    def mark_done(self, key: tuple, metrics: dict, history: list) -> None:
        self.db.execute(
            "UPDATE runs SET status='done', metrics=?, history=?, error=NULL, finished_at=? "
            "WHERE study=? AND variant=? AND seed=? AND dataset=?",
            (json.dumps(metrics), json.dumps(history), time.time(), *key),
        )

    def mark_failed(self, key: tuple, error: str) -> None:
        self.db.execute(
            "UPDATE runs SET status='failed', error=?, finished_at=? "
            "WHERE study=? AND variant=? AND seed=? AND dataset=?",
            (error, time.time(), *key),
        )

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
        cur = self.db.execute(
            "SELECT study, variant, seed, dataset, config_hash, config, status, metrics, history, error, attempts, "
            f"started_at, finished_at FROM runs {where} ORDER BY study, dataset, variant, seed",
            args,
        )
        out = []
        for r in cur.fetchall():
            out.append(
                RunRow(
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    r[4],
                    json.loads(r[5]),
                    r[6],
                    json.loads(r[7]) if r[7] else None,
                    json.loads(r[8]) if r[8] else None,
                    r[9],
                    r[10],
                    r[11],
                    r[12],
                )
            )
        return out

    def save_study(self, study: str, dataset: str, spec: dict, command: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO studies (study, dataset, spec, command, updated_at) VALUES (?, ?, ?, ?, ?)",
            (study, dataset, json.dumps(spec), command, time.time()),
        )

    def studies(self) -> list[tuple[str, str, dict, str]]:
        cur = self.db.execute("SELECT study, dataset, spec, command FROM studies ORDER BY updated_at, study")
        return [(s, d, json.loads(spec), cmd) for s, d, spec, cmd in cur.fetchall()]

    def save_signal(self, study: str, variant: str, dataset: str, config_hash: str, data: dict) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO signals (study, variant, dataset, config_hash, data) VALUES (?, ?, ?, ?, ?)",
            (study, variant, dataset, config_hash, json.dumps(data)),
        )

    def signal(self, study: str, variant: str, dataset: str, config_hash: str) -> dict | None:
        cur = self.db.execute(
            "SELECT data FROM signals WHERE study=? AND variant=? AND dataset=? AND config_hash=?",
            (study, variant, dataset, config_hash),
        )
        r = cur.fetchone()
        return json.loads(r[0]) if r else None

"""The lab's parallel speed-up and how busy it keeps the cores.

Runs ``tricklab lab STUDY --dataset DATASET --seeds N`` twice into fresh folders, alternating which goes first
over ``--pairs`` pairs: with the default pool (one worker process per core, one thread each) and one by one
(``--workers 1``: one process with every core's threads). Printed for each: the lab's wall time (from the
command's start to its exit, worker start-up and the report included) and its **busy share**: the summed wall
time of its runs (from ``results.sqlite``) over processes × the time the pool ran, i.e. how much of the
workers' time went into training; and the speed-up of the pool over one by one (median over the pairs). Not a
test: timings on shared machines are noisy.

    .venv/bin/python benchmarks/lab_speed.py --study dropout --dataset mnist1d --seeds 6 --pairs 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def lab(study: str, dataset: str, seeds: int, out: Path, workers: int | None) -> tuple[float, float, int]:
    """(wall seconds, busy share, runs) of one lab command."""
    cmd = [sys.executable, "-m", "tricklab", "lab", study, "--dataset", dataset, "--seeds", str(seeds)]
    cmd += ["--out", str(out)]
    if workers:
        cmd += ["--workers", str(workers)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    with sqlite3.connect(out / "results.sqlite") as db:
        rows = db.execute("SELECT started_at, finished_at FROM runs WHERE status='done'").fetchall()
    busy = sum(f - s for s, f in rows)
    span = max(f for _, f in rows) - min(s for s, _ in rows)  # the pool's running time: first start, last end
    processes = workers or os.cpu_count() or 1
    return wall, busy / (processes * span), len(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="dropout")
    p.add_argument("--dataset", default="mnist1d")
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--pairs", type=int, default=1)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lab-speed-"))
    walls: dict[str, list[float]] = {"pool": [], "one by one": []}
    busy: dict[str, list[float]] = {"pool": [], "one by one": []}
    try:
        for i in range(args.pairs):
            for kind in ("pool", "one by one") if i % 2 == 0 else ("one by one", "pool"):
                out = root / f"{kind.replace(' ', '-')}-{i}"
                wall, share, n = lab(args.study, args.dataset, args.seeds, out, None if kind == "pool" else 1)
                walls[kind].append(wall)
                busy[kind].append(share)
                print(f"pair {i} {kind:10s}: {n} runs in {wall:.1f}s, busy {100 * share:.1f}%", flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    speedups = [o / p for p, o in zip(walls["pool"], walls["one by one"], strict=True)]
    print(f"\n{args.study} on {args.dataset}, {args.seeds} seeds, {os.cpu_count()} cores:")
    for kind in walls:
        print(
            f"  {kind:10s} median wall {statistics.median(walls[kind]):.1f}s, "
            f"busy {100 * statistics.median(busy[kind]):.1f}%"
        )
    print(f"  speed-up of the pool over one by one: {statistics.median(speedups):.2f}×")


if __name__ == "__main__":
    main()

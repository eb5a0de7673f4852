"""Wall time of one lab under each executor: the process pool and a local Ray instance, on this machine.

Runs ``tricklab lab dropout --dataset mnist1d --seeds 6`` (4 variants × 6 seeds = 24 runs) from scratch in a fresh
lab folder, once with ``--executor process`` and once with ``--executor ray`` (Ray started by the lab, its start-up
included: it is part of what a user waits for), alternating the order from round to round so that a load that
drifts on a shared machine does not favour one executor. Prints each lab's wall time, the median per executor,
and whether the two executors' metrics are identical run for run (they must be: same configs, same seeds, CPU).

    python benchmarks/executors.py              # one round: process, then ray
    python benchmarks/executors.py --rounds 2   # process, ray, ray, process
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAB = ["lab", "dropout", "--dataset", "mnist1d", "--seeds", "6"]
TIMES = ("wall_time_s", "time_s", "epoch_time_s")


def run_lab(executor: str, out: Path) -> float:
    """One lab from scratch under ``executor``; its wall time in seconds (the whole command, start-up included)."""
    cmd = [sys.executable, "-m", "tricklab", *LAB, "--out", str(out), "--executor", executor]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[2:])} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    summary = next(line for line in done.stdout.splitlines() if " runs done, " in line)
    print(f"  {executor:8s} {wall:7.1f} s   ({summary})", flush=True)
    return wall


def metrics(out: Path) -> dict[tuple, dict]:
    con = sqlite3.connect(out / "results.sqlite")
    try:
        got = con.execute("SELECT variant, seed, metrics FROM runs WHERE status = 'done'").fetchall()
    finally:
        con.close()
    return {(v, s): {k: x for k, x in json.loads(m).items() if k not in TIMES} for v, s, m in got}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (process, ray), order alternating (1)")
    args = parser.parse_args()
    from tricklab.assembly import load_data
    from tricklab.config import load_config

    load_data(load_config(overrides={"data.name": "mnist1d"}))  # the dataset cached before anything is timed
    print(f"tricklab {' '.join(LAB)}: {os.cpu_count()} cores, load average before {os.getloadavg()[0]:.1f}")
    walls: dict[str, list[float]] = {"process": [], "ray": []}
    identical = True
    with tempfile.TemporaryDirectory(prefix="tricklab-executors-") as tmp:
        for r in range(args.rounds):
            order = ("process", "ray") if r % 2 == 0 else ("ray", "process")
            print(f"round {r + 1}:", flush=True)
            outs = {}
            for executor in order:
                outs[executor] = Path(tmp) / f"{executor}-{r}"
                walls[executor].append(run_lab(executor, outs[executor]))
            identical &= metrics(outs["process"]) == metrics(outs["ray"])
    p, q = statistics.median(walls["process"]), statistics.median(walls["ray"])
    print(f"median wall: process pool {p:.1f} s, Ray (local instance) {q:.1f} s; ray / process = {q / p:.2f}")
    print(f"metrics identical run for run (times aside): {'yes' if identical else 'NO'}")
    print(f"load average after {os.getloadavg()[0]:.1f} (a shared machine inflates both walls)")


if __name__ == "__main__":
    main()

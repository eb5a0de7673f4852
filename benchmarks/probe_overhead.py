"""Overhead of probing: the same MLP epoch through fit() with a ProbeCallback sampling every 10 steps vs without.

Same model (784-512-512-10 ReLU on MNIST, same initial weights), batch size 128, Adam 1e-3, same data order,
same number of torch threads. Runs alternate (plain, probed, probed, plain, ...) so drift affects both alike;
the first pair warms up and is dropped; the median time ratio probed/plain is printed (target: <= 1.05), for
wall-clock time and for the process's CPU time (steadier on a shared machine, where other jobs stretch the wall
clock; with one thread it measures the work itself).
MNIST comes from $TRICKLAB_DATA (or the cache); when it is absent, MNIST-1D is used. Not a test: timings on
shared machines are noisy.

    TRICKLAB_DATA=../shared/data .venv/bin/python benchmarks/probe_overhead.py --pairs 5

Measured 2026-12-02 (2-core AMD EPYC, quiet, 7 pairs): 1.027 at 1 thread (3.96 s vs 3.86 s), 1.086 at 2 threads
(2.69 s vs 2.46 s), 1.055 at 2 threads an hour later (2.80 s vs 2.64 s); before the probe's cost cut the same day,
1.093 at 1 thread. 2026-12-03, 2 threads: 1.089 (2.686 s vs 2.468 s); per step, in the same process, a sampled step
cost ~2 ms more (its statistics are many small operations that a second thread does not speed up) and every other
step ~0.13 ms more: the global gradient norm the probe took from the NaN/Inf guard (``torch._foreach_norm``, 272 µs
after a backward) in place of the guard's own sums (143 µs). Since the guard hands over its norms on sampled steps
only (same day, 7 pairs): **1.049** at 2 threads (2.622 s vs 2.518 s) and **1.024** at 1 thread (3.958 s vs 3.853 s).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tricklab.data import load_splits
from tricklab.diagnostics.probes import ProbeCallback
from tricklab.diagnostics.records import ACT_STD
from tricklab.engine import fit
from tricklab.errors import DataError
from tricklab.models import build_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="0: all cores")
    p.add_argument("--dataset", default="mnist")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        splits = load_splits(args.dataset)
    except DataError as e:
        print(f"{args.dataset} unavailable ({e}); using mnist1d")
        splits = load_splits("mnist1d")
    x, y = splits.train.x, splits.train.y
    shape, classes = splits.info.input_shape, splits.info.num_classes
    torch.manual_seed(0)
    template = build_model("mlp", shape, classes, depth=2, width=512)

    def fresh():
        m = build_model("mlp", shape, classes, depth=2, width=512)
        m.load_state_dict(template.state_dict())
        return m, torch.optim.Adam(m.parameters(), lr=1e-3)

    times: dict[str, list[float]] = {"plain": [], "probed": []}
    cpu: dict[str, list[float]] = {"plain": [], "probed": []}
    samples = 0
    for i in range(args.pairs + 1):  # the first pair warms up and is dropped
        for kind in ("plain", "probed") if i % 2 == 0 else ("probed", "plain"):
            model, opt = fresh()
            g = torch.Generator().manual_seed(i)
            cbs = [ProbeCallback(args.every)] if kind == "probed" else []
            t, c = time.perf_counter(), time.process_time()
            fit(model, (x, y), epochs=1, optimizer=opt, batch_size=128, generator=g, callbacks=cbs)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            if cbs:
                samples = len(cbs[0].findings().records.steps(ACT_STD))
            if i > 0:
                times[kind].append(dt)
                cpu[kind].append(dc)
    print(f"{splits.info.name}: threads {torch.get_num_threads()}, {args.pairs} pairs, {len(y)} examples/epoch, ")
    print(f"probes every {args.every} steps ({samples} sampled steps per epoch)")
    for clock, t in (("wall", times), ("cpu", cpu)):
        ratios = [a / b for a, b in zip(t["probed"], t["plain"], strict=True)]
        print(f"{clock}: plain  median {statistics.median(t['plain']):.3f}s  {[f'{v:.3f}' for v in t['plain']]}")
        print(f"{clock}: probed median {statistics.median(t['probed']):.3f}s  {[f'{v:.3f}' for v in t['probed']]}")
        print(f"{clock}: median ratio probed/plain {statistics.median(ratios):.3f} ({[f'{r:.3f}' for r in ratios]})")


if __name__ == "__main__":
    main()

"""The small measurements behind choices in the code, re-measured: each prints its figure for benchmarks/README.md.

- ``batch``: a shuffled batch of 128 MNIST-sized rows by ``index_select`` (what ``TensorBatches`` does) vs
  fancy indexing ``x[idx]``;
- ``histogram``: the probes' histogram (``torch.bincount`` of bin indices) vs ``torch.histc`` on a sample of 4,096;
- ``stats``: the probes' ``scaled_stats`` (std, mean, norm, peak without overflow) vs ``torch.std_mean`` on a
  128×512 activation;
- ``worker``: the resident memory of a fresh process that imports torch and tricklab's training modules, what
  ``tricklab.lab.costs.PROCESS_BYTES`` allows a lab worker besides its run;
- ``pool``: how long a lab's pool of 2 worker processes takes from its start to both workers having finished a
  trivial run, spawned vs forked from the fork server (what ``tricklab.lab.runner.WorkerPool`` does), in a fresh
  process each time, and a second pool in the same process (the fork server already running);
- ``layout``: the built-in CNN (3 blocks of 32 channels, batch norm) in channels-last vs the default NCHW layout,
  a training step on 64 MNIST images (Adam) and an evaluation of 1,024, alternating the two layouts (what
  ``engine/placement.py`` chooses on CPU);
- ``preload``: a lab's pool of 2 workers running 2 one-epoch MLP runs on synthetic data, with and without
  ``torch._dynamo`` among the fork server's imports (:data:`tricklab.lab.runner.PRELOAD`; a torch optimizer imports
  it the first time one is built), alternating: wall seconds and CPU seconds of the whole machine (``/proc/stat``,
  so run it on an otherwise idle machine), for the process's first pool (the fork server starts) and a second;
- ``evalbatch``: microseconds per image of an evaluation (``tricklab.engine.loop.evaluate``, channels-last) of
  4,096 MNIST-sized images in batches of 64 to 1,024, for the built-in CNN, the default ResNet and a 784-512-512-10
  MLP (``engine/placement.py``'s ``eval_batch_size`` chooses 128 for a conv net on CPU, 1,024 otherwise).

Not a test: timings on a shared machine are noisy; each figure is the median of ``--repeats`` timings of
``--number`` calls, at one thread.

    .venv/bin/python benchmarks/micro.py
    .venv/bin/python benchmarks/micro.py --only batch stats --repeats 15
    TRICKLAB_DATA=../shared/data .venv/bin/python benchmarks/micro.py --only layout   # builds the CNN for MNIST
    TRICKLAB_DATA=../shared/data .venv/bin/python benchmarks/micro.py --only evalbatch --repeats 3
    .venv/bin/python benchmarks/micro.py --only preload --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import timeit

import torch

WORKER = """
import resource, tricklab.runner, tricklab.lab.runner, tricklab.diagnostics.probes  # what a lab worker imports
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def median_us(fn, number: int, repeats: int) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeats)) / number * 1e6


def batch(number: int, repeats: int) -> str:
    x = torch.rand(60_000, 1, 28, 28)
    idx = torch.randperm(60_000)[:128]
    fancy = median_us(lambda: x[idx], number, repeats)
    select = median_us(lambda: x.index_select(0, idx), number, repeats)
    return f"batch of 128 MNIST rows: index_select {select:.0f} µs, x[idx] {fancy:.0f} µs ({fancy / select:.2f}×)"


def histogram(number: int, repeats: int) -> str:
    from tricklab.diagnostics.probes import histogram as bincount_histogram

    sample = torch.randn(4096)
    ours = median_us(lambda: bincount_histogram(sample, -3.0, 3.0, 40), number, repeats)
    histc = median_us(lambda: torch.histc(sample, 40, -3.0, 3.0), number, repeats)
    return f"4,096 values in 40 bins: bincount {ours:.0f} µs, torch.histc {histc:.0f} µs ({histc / ours:.2f}×)"


def stats(number: int, repeats: int) -> str:
    from tricklab.diagnostics.probes import scaled_stats

    y = torch.randn(128, 512)
    ours = median_us(lambda: scaled_stats(y), number, repeats)
    std_mean = median_us(lambda: [float(t) for t in torch.std_mean(y, correction=0)], number, repeats)
    return f"std and mean of 128×512: scaled_stats {ours:.0f} µs, std_mean {std_mean:.0f} µs ({std_mean / ours:.2f}×)"


def worker(number: int, repeats: int) -> str:
    kib = [
        int(subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, check=True).stdout)
        for _ in range(max(1, min(repeats, 3)))
    ]
    return f"a fresh worker process (torch and tricklab imported): {statistics.median(kib) / 1024:.0f} MiB resident"


POOL = """
import operator, sys, time
import tricklab.lab.runner as r
if sys.argv[1] == "spawn":
    r.start_method = lambda: "spawn"

def pool_seconds():
    t0 = time.perf_counter()
    trivial = {"metrics": {}, "history": [], "hash": "h"}  # the run: three keys read back
    with r.WorkerPool(2, 1, fn=operator.itemgetter("metrics", "history", "hash")) as pool:
        pool.run([r.Task((i,), trivial) for i in range(2)], lambda e: None, poll_s=0.01)
    return time.perf_counter() - t0

print(pool_seconds(), pool_seconds())
"""


def pool(number: int, repeats: int) -> str:
    out: dict[str, list[tuple[float, float]]] = {"spawn": [], "forkserver": []}
    for _ in range(max(1, min(repeats, 5))):  # alternating
        for method in out:
            cmd = [sys.executable, "-c", POOL, method]
            first, second = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
            out[method].append((float(first), float(second)))
    med = {m: [statistics.median(v[i] for v in runs) for i in (0, 1)] for m, runs in out.items()}
    return (
        f"a pool of 2 workers to 2 finished runs: spawn {med['spawn'][0]:.2f} s (again {med['spawn'][1]:.2f} s), "
        f"fork server {med['forkserver'][0]:.2f} s (again, the server running: {med['forkserver'][1]:.2f} s)"
    )


PRELOADED = """
import os, sys, time
import tricklab.lab.runner as r
if sys.argv[1] == "without":
    r.PRELOAD = tuple(m for m in r.PRELOAD if m != "torch._dynamo")

def busy_seconds():
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")

def one_pool():
    cfg = {"data": {"name": "synthetic"}, "model": {"name": "mlp", "depth": 1, "width": 16}, "train": {"epochs": 1}}
    t0, b0 = time.perf_counter(), busy_seconds()
    with r.WorkerPool(2, 1) as pool:
        pool.run([r.Task((i,), cfg) for i in range(2)], lambda e: None, poll_s=0.01)
    return time.perf_counter() - t0, busy_seconds() - b0

print(*one_pool(), *one_pool())
"""


def preload(number: int, repeats: int) -> str:
    out: dict[str, list[list[float]]] = {"without": [], "with": []}
    for _ in range(max(1, min(repeats, 5))):  # alternating
        for mode in out:
            done = subprocess.run([sys.executable, "-c", PRELOADED, mode], capture_output=True, text=True, check=True)
            out[mode].append([float(v) for v in done.stdout.split()])
    med = {m: [statistics.median(run[i] for run in runs) for i in range(4)] for m, runs in out.items()}
    return "; ".join(
        f"{m} torch._dynamo in the fork server: first pool {v[0]:.2f} s wall, {v[1]:.2f} CPU s; "
        f"second pool {v[2]:.2f} s wall, {v[3]:.2f} CPU s"
        for m, v in med.items()
    )


def layout(number: int, repeats: int) -> str:
    import copy

    import torch.nn.functional as F

    import tricklab

    base = tricklab.create_model("cnn", data="mnist", depth=3, width=32, norm="batch")
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    xe = torch.randn(1024, 1, 28, 28)
    steps = max(5, number // 10)

    def timed(nhwc: bool) -> tuple[float, float]:
        m = copy.deepcopy(base)
        xb, xv = x, xe
        if nhwc:
            m = m.to(memory_format=torch.channels_last)
            xv = xe.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.Adam(m.parameters(), 3e-3)
        m.train()
        t0 = timeit.default_timer()
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(m(xb), y).backward()
            opt.step()
        step = (timeit.default_timer() - t0) / steps
        m.eval()
        with torch.no_grad():
            t0 = timeit.default_timer()
            m(xv)
            return step, timeit.default_timer() - t0

    runs = {False: [], True: []}
    for _ in range(repeats):  # alternating, so that a load change hits both layouts alike
        for nhwc in (False, True):
            runs[nhwc].append(timed(nhwc))
    med = {k: [statistics.median(r[i] for r in v) for i in (0, 1)] for k, v in runs.items()}
    (s0, e0), (s1, e1) = med[False], med[True]
    return (
        f"CNN 3×32+BN: training step (64) NCHW {s0 * 1e3:.1f} ms, channels-last {s1 * 1e3:.1f} ms ({s1 / s0:.2f}×); "
        f"evaluation (1,024) NCHW {e0 * 1e3:.0f} ms, channels-last {e1 * 1e3:.0f} ms ({e1 / e0:.2f}×)"
    )


def evalbatch(number: int, repeats: int) -> str:
    import tricklab
    from tricklab.engine.loop import evaluate
    from tricklab.engine.placement import place_model

    sizes = (64, 128, 256, 512, 1024)
    models = {
        "CNN 3×32+BN": tricklab.create_model("cnn", data="mnist", depth=3, width=32, norm="batch"),
        "ResNet": tricklab.create_model("resnet", data="mnist"),
        "MLP 512-512": tricklab.create_model("mlp", data="mnist", depth=2, width=512),
    }
    x = torch.randn(4096, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4096,))
    lines = []
    for name, m in models.items():
        place_model(m, torch.device("cpu"))
        runs = {b: [] for b in sizes}
        for _ in range(repeats):  # the batch sizes alternate, so that a load change hits them alike
            for b in sizes:
                t0 = timeit.default_timer()
                evaluate(m, (x, y), batch_size=b)
                runs[b].append((timeit.default_timer() - t0) / len(x))
        per = {b: statistics.median(v) * 1e6 for b, v in runs.items()}
        lines.append(f"{name}: " + ", ".join(f"{b}: {us:.0f}" for b, us in per.items()) + " µs/image")
    return "; ".join(lines)


MEASURES = {
    "batch": batch,
    "histogram": histogram,
    "stats": stats,
    "worker": worker,
    "pool": pool,
    "preload": preload,
    "layout": layout,
    "evalbatch": evalbatch,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=sorted(MEASURES), help="measure these only (default: all)")
    p.add_argument("--number", type=int, default=200, help="calls per timing")
    p.add_argument("--repeats", type=int, default=7, help="timings per figure (the median is printed)")
    args = p.parse_args()
    torch.set_num_threads(1)
    for name in args.only or MEASURES:
        print(f"{name}: {MEASURES[name](args.number, args.repeats)}", flush=True)


if __name__ == "__main__":
    main()

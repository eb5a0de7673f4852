"""Overhead of ``tricklab train`` over a plain hand-written PyTorch script doing the same work.

The job is tricklab's default run: MNIST standardized, 784-512-512-10 ReLU MLP (He init), Adam 1e-3 with a
cosine schedule, batch 128, validation on 6,000 held-out examples after every epoch. Both sides do the same
work, timed from loading the data to the last file written:

- tricklab: ``tricklab.runner.run(cfg, run_dir)`` — data, model, the loop with its events and NaN/Inf guard,
  validation, ``history.jsonl``, a checkpoint per epoch (safetensors + manifest, fsynced), test evaluation,
  ``metrics.json`` and the weights.
- plain: the same data function, the same initial weights and data order, the same fused Adam kernel that tricklab
  picks (see ``tricklab.tricks.optimizers.FUSABLE``) and the same batch gather (``index_select``), a for-loop over
  shuffled index slices, ``torch.no_grad`` validation, one JSON line per epoch, ``torch.save`` of model and
  optimizer per epoch (to a temporary file, fsync, rename), test evaluation and the weights.

Runs alternate (plain, tricklab, tricklab, plain, ...) after one warm-up pair that is dropped; the median of
the pairwise time ratios tricklab/plain is printed, at each thread count asked for. ``--profile`` prints where a
tricklab run's time goes (cProfile, cumulative, tricklab's own functions). Not a test: timings on shared
machines are noisy. ``--width 16`` runs the same comparison on a narrow net, where the difference is mostly the
loop's own per-step cost.

    TRICKLAB_DATA=../shared/data .venv/bin/python benchmarks/overhead.py --pairs 7 --threads 1 2
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import pstats
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tricklab.assembly import build_model, load_data
from tricklab.config import load_config
from tricklab.runner import run


def config(epochs: int, threads: int, dataset: str, width: int | None = None):
    overrides = {"data.name": dataset, "train.epochs": epochs, "train.threads": threads, "train.device": "cpu"}
    return load_config(overrides=overrides | ({"model.width": width} if width else {}))


@torch.no_grad()
def evaluate(model, x, y, batch=1024):
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch):
        out = model(x[i : i + batch])
        loss += F.cross_entropy(out, y[i : i + batch], reduction="sum").item()
        correct += (out.argmax(1) == y[i : i + batch]).sum().item()
    model.train()
    return loss / len(y), correct / len(y)


def plain_run(cfg, out: Path) -> float:
    """The hand-written script; returns its final test accuracy."""
    torch.set_num_threads(cfg.train.threads)
    splits = load_data(cfg)
    model, generator = build_model(cfg, splits, cfg.train.seed)  # the same initial weights and data order
    # the same kernel as tricklab's (a bare Adam(...) takes the foreach one on CPU, ~1 ms/step slower here)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, fused=True)
    x, y = splits.train.x, splits.train.y
    b, n = cfg.data.batch_size, len(y)
    steps = math.ceil(n / b) * cfg.train.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "history.jsonl", "a") as hist:
        for epoch in range(1, cfg.train.epochs + 1):
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=generator)
            loss_sum, correct = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.long)
            for i in range(0, n, b):
                idx = order[i : i + b]
                xb, yb = x.index_select(0, idx), y.index_select(0, idx)  # the gather tricklab uses (x[idx]: 2× slower)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.detach().double() * len(yb)
                correct += (logits.detach().argmax(1) == yb).sum()
            val_loss, val_acc = evaluate(model, splits.val.x, splits.val.y)
            row = {"epoch": epoch, "train_loss": loss_sum.item() / n, "train_acc": correct.item() / n}
            row |= {"val_loss": val_loss, "val_acc": val_acc, "epoch_time_s": time.perf_counter() - t0}
            hist.write(json.dumps(row) + "\n")
            hist.flush()
            os.fsync(hist.fileno())
            tmp = out / "ckpt.pt.tmp"
            with open(tmp, "wb") as f:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, out / "ckpt.pt")
    _, test_acc = evaluate(model, splits.test.x, splits.test.y)
    torch.save(model.state_dict(), out / "model.pt")
    return test_acc


def tricklab_run(cfg, out: Path) -> float:
    return run(cfg, out).metrics["test_acc"]


def measure(threads: int, pairs: int, epochs: int, dataset: str, width: int | None = None) -> None:
    cfg = config(epochs, threads, dataset, width)
    times: dict[str, list[float]] = {"plain": [], "tricklab": []}
    accs: dict[str, list[float]] = {"plain": [], "tricklab": []}
    root = Path(tempfile.mkdtemp(prefix="overhead-"))
    try:
        for i in range(pairs + 1):  # pair 0 warms up and is dropped
            for kind in ("plain", "tricklab") if i % 2 == 0 else ("tricklab", "plain"):
                out = root / f"{kind}-{i}"
                t = time.perf_counter()
                acc = (plain_run if kind == "plain" else tricklab_run)(cfg, out)
                dt = time.perf_counter() - t
                shutil.rmtree(out, ignore_errors=True)
                if i > 0:
                    times[kind].append(dt)
                    accs[kind].append(acc)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratios = [t / p for t, p in zip(times["tricklab"], times["plain"], strict=True)]
    net = f", width {width}" if width else ""
    print(f"threads {threads}: {pairs} pairs of {epochs}-epoch runs on {dataset}{net}")
    for kind in ("plain", "tricklab"):
        print(
            f"  {kind:8s} median {statistics.median(times[kind]):7.2f}s  test acc {statistics.mean(accs[kind]):.4f}"
            f"  {[round(t, 2) for t in times[kind]]}"
        )
    print(f"  median ratio tricklab/plain: {statistics.median(ratios):.3f}  (pairwise {[round(r, 3) for r in ratios]})")


def profile(threads: int, epochs: int, dataset: str) -> None:
    cfg = config(epochs, threads, dataset)
    root = Path(tempfile.mkdtemp(prefix="overhead-profile-"))
    prof = cProfile.Profile()
    try:
        tricklab_run(cfg, root / "warm-up")  # imports and first-call costs, which the timed pairs do not see either
        prof.enable()
        tricklab_run(cfg, root / "run")
        prof.disable()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(r"tricklab", 30)
    stats.sort_stats("tottime").print_stats(20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--profile", action="store_true", help="profile one tricklab run instead")
    p.add_argument(
        "--width",
        type=int,
        help="hidden width instead of the default 512: a narrow net (16) leaves little but the per-step Python, so "
        "the time difference over the steps is the loop's own cost per step",
    )
    args = p.parse_args()
    if args.profile:
        profile(args.threads[0], args.epochs, args.dataset)
        return
    for threads in args.threads:
        measure(threads, args.pairs, args.epochs, args.dataset, args.width)


if __name__ == "__main__":
    main()

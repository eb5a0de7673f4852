"""Overhead of tricklab's fit() over a plain hand-written PyTorch loop: the same MLP epoch on MNIST.

Same model (784-512-512-10 ReLU, same initial weights), batch size 128, Adam 1e-3, same data order and the
same number of torch threads. Runs alternate (plain, tricklab, plain, ...) so drift affects both alike; the
median time ratio tricklab/plain is printed. Not a test: timings on shared machines are noisy.

    TRICKLAB_DATA=../shared/data .venv/bin/python benchmarks/overhead.py --pairs 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from tricklab.data import load_splits
from tricklab.models import build_model
from tricklab.train import fit


def plain_epoch(model, opt, x, y, batch_size, generator):
    model.train()
    order = torch.randperm(len(y), generator=generator)
    for i in range(0, len(y), batch_size):
        idx = order[i : i + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="0: all cores")
    p.add_argument("--dataset", default="mnist")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_splits(args.dataset)
    x, y = splits.train.x, splits.train.y
    torch.manual_seed(0)
    template = build_model("mlp", splits.info.input_shape, 10, depth=2, width=512)

    def fresh():
        m = build_model("mlp", splits.info.input_shape, 10, depth=2, width=512)
        m.load_state_dict(template.state_dict())
        return m, torch.optim.Adam(m.parameters(), lr=1e-3)

    times: dict[str, list[float]] = {"plain": [], "tricklab": []}
    for i in range(args.pairs + 1):  # the first pair warms up and is dropped
        for kind in ("plain", "tricklab") if i % 2 == 0 else ("tricklab", "plain"):
            model, opt = fresh()
            g = torch.Generator().manual_seed(i)
            t = time.perf_counter()
            if kind == "plain":
                plain_epoch(model, opt, x, y, 128, g)
            else:
                fit(model, (x, y), epochs=1, optimizer=opt, batch_size=128, generator=g)
            dt = time.perf_counter() - t
            if i > 0:
                times[kind].append(dt)
    ratios = [t / p for t, p in zip(times["tricklab"], times["plain"], strict=True)]
    print(f"threads {torch.get_num_threads()}, {args.pairs} pairs, {len(y)} examples/epoch")
    print(f"plain    median {statistics.median(times['plain']):.3f}s  {[f'{t:.3f}' for t in times['plain']]}")
    print(f"tricklab median {statistics.median(times['tricklab']):.3f}s  {[f'{t:.3f}' for t in times['tricklab']]}")
    print(f"median ratio tricklab/plain: {statistics.median(ratios):.3f} (pairwise: {[f'{r:.3f}' for r in ratios]})")


if __name__ == "__main__":
    main()

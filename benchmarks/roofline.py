"""The physical limit: this machine's matmul peak (fp32, bf16) and the MLP epoch's achieved share of it.

Peak: the best of ``--repeats`` timings of an n×n by n×n matmul (2n³ flops) at each thread count, for fp32
and bf16. The job: one training epoch of tricklab's default MLP (784-512-512-10, batch 128, Adam) on MNIST's
54,000 training examples through ``fit()`` (no validation), fp32. Its useful flops: each Linear layer of
shape (out, in) costs 2·in·out per example forward and 4·in·out backward (the gradients of the weights and of
the inputs), except the first layer, whose input gradient is not needed (2·in·out); the rest (activations,
loss, Adam) is counted as zero, so the figure is a lower bound on the work done. Printed: peak GFLOP/s, the
epoch's time and achieved GFLOP/s and the ratio. Not a test.

Where the rest goes (skipped with ``--no-profile``): the job's own matmuls alone (the step's forward and backward
matrix products at its shapes, batch 128, timed in a loop without anything else: the ceiling of this job on this
machine), and a torch.profiler table of one warm epoch's time by kind of operation (matrix products, the
optimizer, activations, loss, sums (mostly the NaN/Inf guard's; the accuracy count's too), batch gathering, the
rest), with the time outside any torch operation (Python, the loop) as the wall time minus the operations' own
time.

    TRICKLAB_DATA=../shared/data .venv/bin/python benchmarks/roofline.py --threads 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from tricklab.assembly import assemble
from tricklab.config import load_config
from tricklab.engine.loop import fit


def matmul_peak(dtype: torch.dtype, n: int, repeats: int) -> float:
    """Best GFLOP/s of an n×n matmul; the size is halved first while one takes over 2 s (bf16 without bf16
    hardware runs ~100× slower than fp32: a full-size timing would take minutes)."""
    while n > 128:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        if _timed(lambda a=a, b=b: a @ b) < 2.0:  # also the warm-up
            break
        n //= 2
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def matmul_only(model: nn.Module, batch: int, steps: int) -> float:
    """GFLOP/s of the job's matrix products alone: per step, each Linear's forward ``x @ Wᵀ + b`` (``addmm``), its
    weight gradient ``δᵀ @ x`` and (not the first layer's) its input gradient ``δ @ W``, at batch ``batch``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    mats = [
        (
            torch.randn(batch, m.in_features),
            m.weight.detach().clone(),
            m.bias.detach().clone(),
            torch.randn(batch, m.out_features),
        )
        for m in linears
    ]

    def step() -> None:
        for i, (x, w, b, d) in enumerate(mats):
            torch.addmm(b, x, w.t())
            d.t() @ x
            if i:
                d @ w

    for _ in range(20):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t
    return epoch_flops(model, batch * steps) / seconds / 1e9


KINDS = {  # operation name (torch.profiler's key) -> kind; anything else is "other operations"
    "matrix products": ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"),
    "optimizer": ("aten::_fused_adam_", "aten::_fused_adamw_", "aten::_fused_sgd_", "aten::_foreach_"),
    "activations": ("aten::relu", "aten::threshold_backward", "aten::clamp_min"),
    "loss": (
        "aten::cross_entropy",
        "aten::log_softmax",
        "aten::_log_softmax",
        "aten::nll_loss",
        "aten::_log_softmax_backward_data",
        "aten::nll_loss_backward",
    ),
    "sums (guard, acc)": ("aten::sum", "aten::stack", "aten::isfinite", "aten::add", "aten::_local_scalar_dense"),
    "batches": ("aten::index_select", "aten::randperm"),
}


def kind_of(name: str) -> str:
    for kind, prefixes in KINDS.items():
        if any(name == p or (p.endswith("_") and name.startswith(p)) for p in prefixes):
            return kind
    return "other operations"


def profile_epoch(parts, cfg, state) -> tuple[float, dict[str, float]]:
    """One warm epoch under torch.profiler: its wall seconds and the operations' own (self) CPU seconds by kind."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        fit(
            parts.model,
            parts.splits.train,
            epochs=state.epoch + 1,
            optimizer=parts.optimizer,
            generator=parts.generator,
            batch_size=cfg.data.batch_size,
            state=state,
        )
        wall = time.perf_counter() - t
    by_kind: dict[str, float] = {}
    for e in prof.key_averages():
        by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0.0) + e.self_cpu_time_total / 1e6
    return wall, by_kind


def epoch_flops(model: nn.Module, examples: int) -> float:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    per_example = sum(2 * m.in_features * m.out_features * (3 if i else 2) for i, m in enumerate(linears))
    return per_example * examples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3, help="epochs timed (median), after one warm-up epoch")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the matmul-only and profiler parts")
    args = p.parse_args()
    for threads in args.threads:
        torch.set_num_threads(threads)
        peak32 = matmul_peak(torch.float32, args.n, args.repeats)
        peak16 = matmul_peak(torch.bfloat16, args.n, args.repeats)
        cfg = load_config(
            overrides={
                "data.name": args.dataset,
                "train.threads": threads,
                "train.device": "cpu",
                "schedule.name": "constant",
            }
        )
        parts = assemble(cfg)
        state, times = None, []
        for epoch in range(1, args.epochs + 2):
            t = time.perf_counter()
            state = fit(
                parts.model,
                parts.splits.train,
                epochs=epoch,
                optimizer=parts.optimizer,
                generator=parts.generator,
                batch_size=cfg.data.batch_size,
                state=state,
            )
            if epoch > 1:
                times.append(time.perf_counter() - t)
        flops = epoch_flops(parts.model, len(parts.splits.train))
        epoch_s = statistics.median(times)
        achieved = flops / epoch_s / 1e9
        print(f"threads {threads}: matmul peak fp32 {peak32:.1f} GFLOP/s, bf16 {peak16:.2f} GFLOP/s (n ≤ {args.n})")
        print(
            f"  MLP epoch ({len(parts.splits.train)} examples, {flops / 1e9:.1f} GFLOP): median {epoch_s:.2f}s, "
            f"{achieved:.1f} GFLOP/s = {100 * achieved / peak32:.0f}% of the fp32 peak"
        )
        if not args.profile:
            continue
        only = matmul_only(parts.model, cfg.data.batch_size, steps=len(parts.splits.train) // cfg.data.batch_size)
        print(
            f"  its matrix products alone, at its shapes: {only:.1f} GFLOP/s = {100 * only / peak32:.0f}% of the peak "
            f"(the epoch reaches {100 * achieved / only:.0f}% of that)"
        )
        wall, by_kind = profile_epoch(parts, cfg, state)
        ops = sum(by_kind.values())
        print(
            f"  one epoch under the profiler: {wall:.2f}s wall (the profiler adds its own cost); by kind of operation:"
        )
        for kind, sec in sorted(by_kind.items(), key=lambda kv: -kv[1]):
            print(f"    {kind:<18} {sec:6.2f}s  {100 * sec / wall:5.1f}%")
        print(
            f"    {'outside operations':<18} {wall - ops:6.2f}s  {100 * (wall - ops) / wall:5.1f}%  (Python, the loop)"
        )


if __name__ == "__main__":
    main()

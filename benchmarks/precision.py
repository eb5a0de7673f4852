"""``train.precision`` and ``train.compile`` on the default MLP job: epoch time and test accuracy vs fp32 eager.

The job: standardized MNIST, 784-512-512-10 ReLU MLP, Adam 1e-3, batch 128 (tricklab's default run, constant
LR). For each seed, one model per mode (fp32, bf16, compile = fp32 under ``nn.Module.compile``) trains epoch by
epoch, the modes alternating within each epoch in a rotating order, so drift hits all alike; the first epoch of
each (warm-up, compilation) is dropped from the times. Printed: each mode's median epoch time (training plus
validation) and its ratio to fp32 over the same epochs, and the mean test accuracy over the seeds. Whether bf16
can be faster depends on the CPU: it needs bf16 matrix units (AVX-512 BF16, AMX); the flags are printed. Not a
test: timings on shared machines are noisy.

    TRICKLAB_DATA=../shared/data .venv/bin/python benchmarks/precision.py --seeds 3 --epochs 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

from tricklab.assembly import assemble
from tricklab.config import load_config
from tricklab.engine.loop import evaluate, fit

MODES = ("fp32", "bf16", "compile")


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return ", ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument(
        "--subset", type=int, default=None, help="train on this many examples (bf16 without hardware is slow)"
    )
    args = p.parse_args()
    times: dict[str, list[float]] = {m: [] for m in args.modes}
    accs: dict[str, list[float]] = {m: [] for m in args.modes}
    for seed in range(args.seeds):
        runs = {}
        for mode in args.modes:
            cfg = load_config(
                overrides={
                    "data.name": args.dataset,
                    "train.seed": seed,
                    "train.threads": args.threads,
                    "train.device": "cpu",
                    "schedule.name": "constant",
                    "train.precision": "bf16" if mode == "bf16" else "fp32",
                    **({"data.subset": args.subset} if args.subset else {}),
                }
            )
            parts = assemble(cfg)
            if mode == "compile":
                parts.model.compile()
            runs[mode] = [parts, None]
        for epoch in range(1, args.epochs + 1):
            k = epoch % len(args.modes)
            for mode in args.modes[k:] + args.modes[:k]:
                parts, state = runs[mode]
                t = time.perf_counter()
                state = fit(
                    parts.model,
                    parts.splits.train,
                    parts.splits.val,
                    epochs=epoch,
                    optimizer=parts.optimizer,
                    generator=parts.generator,
                    batch_size=parts.config.data.batch_size,
                    state=state,
                    precision=parts.precision,
                )
                dt = time.perf_counter() - t
                runs[mode][1] = state
                if epoch > 1:
                    times[mode].append(dt)
        for mode in args.modes:
            parts = runs[mode][0]
            acc = evaluate(parts.model, parts.splits.test, precision=parts.precision)["acc"]
            accs[mode].append(acc)
            print(f"seed {seed} {mode:8s} test acc {acc:.4f}", flush=True)
    subset = f", {args.subset} examples" if args.subset else ""
    print(
        f"\n{args.dataset}{subset}, {args.threads} threads, {args.seeds} seeds × {args.epochs} epochs; "
        f"CPU: {cpu_flags()}"
    )
    for mode in args.modes:
        line = f"  {mode:8s} median epoch {statistics.median(times[mode]):6.2f}s"
        line += f"  mean test acc {100 * statistics.mean(accs[mode]):.2f}%"
        if mode != "fp32" and "fp32" in times:
            ratios = [f / m for f, m in zip(times["fp32"], times[mode], strict=True)]
            diff = 100 * (statistics.mean(accs[mode]) - statistics.mean(accs["fp32"]))
            line += f"  speed-up over fp32 {statistics.median(ratios):.2f}×  accuracy {diff:+.2f} pp"
        print(line)


if __name__ == "__main__":
    main()

"""The GPU path, measured: precisions, compile, steps/s vs a hand-written loop, and MNIST to 99% in seconds.

Prepared for a machine with a CUDA GPU (it runs on CPU too, for a smoke check: ``--device cpu --quick``). Prints:

1. For the default MLP (784-512-512-10) and the default CNN on MNIST, batch 128, Adam 1e-3: training steps per
   second through tricklab's ``fit()`` in fp32, bf16, fp16 (CUDA only) and fp32 under ``torch.compile``, and
   through a hand-written loop in fp32 on the same device-resident data; each the median of ``--repeats``
   timed epochs after a warm-up epoch, modes alternating.
2. MNIST to 99% test accuracy: a CNN (``model.name=cnn``, width 64, depth 3, batch norm, Adam 1e-3 constant,
   batch 128, bf16 where supported), trained epoch by epoch until its test accuracy reaches 99%; the wall time
   from the first step (data already on the device) and the epochs it took, or the best accuracy after
   ``--max-epochs``.

    TRICKLAB_DATA=../shared/data python benchmarks/gpu.py             # on the GPU machine
    TRICKLAB_DATA=../shared/data python benchmarks/gpu.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from tricklab.assembly import assemble
from tricklab.config import load_config
from tricklab.engine.loop import evaluate, fit
from tricklab.engine.placement import place_splits


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parts_for(model: str, device: str, precision: str = "fp32", **extra):
    overrides = {"model.name": model, "train.device": device, "schedule.name": "constant", "train.precision": precision}
    parts = assemble(load_config(overrides={**overrides, **extra}))
    parts.splits, _ = place_splits(parts.splits, parts.device)
    parts.model.to(parts.device)
    return parts


def next_epoch(parts, state, epoch: int):
    """Train ``parts`` (an assembled config) up to ``epoch`` through tricklab's ``fit()``, continuing ``state``."""
    return fit(
        parts.model,
        parts.splits.train,
        epochs=epoch,
        optimizer=parts.optimizer,
        generator=parts.generator,
        batch_size=128,
        state=state,
        precision=parts.precision,
        device=parts.device,
    )


def hand_epoch(model, opt, x, y, batch: int, generator) -> None:
    order = torch.randperm(len(y), generator=generator).to(x.device)
    for i in range(0, len(y), batch):
        idx = order[i : i + batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def steps_per_second(model_name: str, device: str, repeats: int, subset: int | None) -> None:
    dev = torch.device(device)
    modes = ["fp32", "bf16"] + (["fp16"] if dev.type == "cuda" else []) + ["compile", "hand-written"]
    runs = {}
    for mode in modes:
        extra = {"data.subset": subset} if subset else {}
        precision = mode if mode in ("bf16", "fp16") else "fp32"
        parts = parts_for(model_name, device, precision, **extra)
        if mode == "compile":
            parts.model.compile()
        runs[mode] = [parts, None]
    times: dict[str, list[float]] = {m: [] for m in modes}
    for epoch in range(1, repeats + 2):
        k = epoch % len(modes)
        for mode in modes[k:] + modes[:k]:
            parts, state = runs[mode]
            sync(parts.device)
            t = time.perf_counter()
            if mode == "hand-written":
                hand_epoch(
                    parts.model, parts.optimizer, parts.splits.train.x, parts.splits.train.y, 128, parts.generator
                )
            else:
                state = next_epoch(parts, state, epoch)
                runs[mode][1] = state
            sync(parts.device)
            if epoch > 1:
                times[mode].append(time.perf_counter() - t)
    steps = -(-len(runs["fp32"][0].splits.train) // 128)
    print(f"{model_name} on {device}: {steps} steps per epoch, median of {repeats} epochs")
    for mode in modes:
        sps = steps / statistics.median(times[mode])
        print(f"  {mode:12s} {sps:8.1f} steps/s")


def to_99(device: str, max_epochs: int) -> None:
    dev = torch.device(device)
    precision = "bf16" if dev.type == "cpu" or torch.cuda.is_bf16_supported() else "fp32"
    parts = parts_for(
        "cnn",
        device,
        precision,
        **{
            "model.width": 64,
            "model.depth": 3,
            "model.norm": "batch",
            "train.epochs": max_epochs,
        },
    )
    sync(parts.device)
    t, state, best = time.perf_counter(), None, 0.0
    for epoch in range(1, max_epochs + 1):
        state = next_epoch(parts, state, epoch)
        acc = evaluate(parts.model, parts.splits.test, precision=parts.precision)["acc"]
        best = max(best, acc)
        if acc >= 0.99:
            sync(parts.device)
            print(
                f"MNIST to 99% test accuracy on {device} ({precision}): {time.perf_counter() - t:.1f}s, {epoch} epochs"
            )
            return
    print(f"MNIST: 99% not reached in {max_epochs} epochs on {device}; best {100 * best:.2f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-epochs", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="2 repeats on 5,000 examples, 1 epoch to 99%%: a smoke check")
    args = p.parse_args()
    repeats, subset = (2, 5000) if args.quick else (args.repeats, None)
    for model in ("mlp", "cnn"):
        steps_per_second(model, args.device, repeats, subset)
    to_99(args.device, 1 if args.quick else args.max_epochs)


if __name__ == "__main__":
    main()

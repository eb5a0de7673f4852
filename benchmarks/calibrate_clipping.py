"""Pick the clipping study's learning rate before its study is run: the rate at which the unclipped baseline
diverges (NaN/Inf, or blows up: tricklab.engine.loop.blown_up) within about 200 steps in at least 4 of 5 seeds.

The clipping study can only show what clipping does where gradients explode; a He-initialized ReLU MLP does not
explode by itself, so the study relies on too high a rate. This script measures, for each candidate rate (from
low to high) and dataset, how many of 5 seeds of the *baseline only* (clip.mode=none) diverge within ~200 steps.
It never runs a clipped variant: the study's rate is fixed from the baseline's behaviour, before any comparison.

    python benchmarks/calibrate_clipping.py            # both datasets (MNIST needs TRICKLAB_DATA or a download)
    python benchmarks/calibrate_clipping.py mnist1d
"""

from __future__ import annotations

import argparse
import time

import tricklab
from tricklab.engine.loop import DivergedError, NonFiniteError

RATES = (0.05, 0.1, 0.2, 0.5)
SEEDS = 5
SETUPS = {  # the study's base (src/tricklab/lab/studies.py) cut to ~200 steps
    "mnist": {"data.subset": 200 * 128, "train.epochs": 1},
    "mnist1d": {"model.width": 256, "data.batch_size": 64, "train.epochs": 4},  # 57 steps per epoch
}
BASE = {
    "model.depth": 8,
    "model.width": 256,
    "optim.name": "momentum",
    "schedule.name": "constant",
    "init.scheme": "he_normal",
    "clip.mode": "none",
    "train.threads": 1,
}


def diverges(overrides: dict) -> bool:
    try:
        result = tricklab.run(overrides, write=False)
    except (NonFiniteError, DivergedError):  # training stopped on NaN/Inf, or ended blown up
        return True
    return bool(result.metrics.get("diverged"))


def main(datasets: list[str]) -> None:
    for ds in datasets:
        for lr in RATES:
            t = time.perf_counter()
            n = sum(
                diverges({**BASE, **SETUPS[ds], "data.name": ds, "optim.lr": lr, "train.seed": s}) for s in range(SEEDS)
            )
            print(f"{ds:8s} lr {lr:<5g} (momentum 0.9): {n}/{SEEDS} seeds diverge within ~200 steps "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", choices=list(SETUPS), help="default: all")
    main(parser.parse_args().datasets or list(SETUPS))

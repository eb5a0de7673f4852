"""How close a 2-process DDP run (torchrun, gloo on CPU) comes to the 1-process run of the same global batch.

Each case is trained twice from the same config, ``python -m tricklab train`` and ``torchrun --standalone
--nproc_per_node=2 -m tricklab train``, and the two run directories are compared: the largest absolute difference
of any final weight, of the test metrics, and of every epoch's train and validation metrics. With the mean loss
over equal shards, DDP's averaged gradient is the full batch's up to float32 summation order, so the differences
are rounding, grown by training (tricklab.engine.distributed explains the design).

    python benchmarks/ddp_equivalence.py            # both cases (mnist1d needs TRICKLAB_DATA or its generator)
    python benchmarks/ddp_equivalence.py synthetic

Measured on a 2-core CPU (torch 2.13.0+cpu, gloo; differences between the 1- and the 2-process run):

    case                                          steps  max|Δw|  |Δtest_loss|  |Δacc|  max|Δval_loss|  max|Δtrain_loss|
    synthetic MLP 1×32, SGD 0.1, batch 32, 3 ep      42  6.0e-08       3.0e-08       0               0           2.8e-08
    mnist1d MLP 2×256, Adam 1e-3, batch 128, 5 ep   145  6.0e-08       1.2e-07       0               0           6.2e-08

(float32 rounding: the largest weight difference is a few units in the last place; tests/engine/test_ddp.py
asserts < 1e-5.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

CASES = {
    "synthetic": [  # the test's config (tests/engine/test_ddp.py)
        "data.name=synthetic",
        "data.val_fraction=0.125",
        "data.batch_size=32",
        "model.width=32",
        "model.depth=1",
        "model.dropout=0",
        "optim.name=sgd",
        "optim.lr=0.1",
        "train.epochs=3",
    ],
    "mnist1d": [  # 3,600 training signals: 28 global batches of 128 and one of 16, all split evenly in two
        "data.name=mnist1d",
        "data.batch_size=128",
        "model.width=256",
        "model.depth=2",
        "model.dropout=0",
        "optim.name=adam",
        "optim.lr=0.001",
        "train.epochs=5",
    ],
}
COMMON = ["train.threads=1", "train.device=cpu"]


def train(cwd: Path, overrides: list[str], processes: int) -> float:
    sets = [a for o in [*overrides, *COMMON] for a in ("--set", o)]
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.run(
        [*launcher, "-m", "tricklab", "train", *sets, "--out", f"p{processes}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"{processes} process(es) failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - start


def compare(a: Path, b: Path) -> dict[str, float]:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    ha, hb = ([json.loads(x) for x in (d / "history.jsonl").read_text().splitlines()] for d in (a, b))
    return {
        "steps": ma["steps"],
        "max|Δw|": max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa),
        "|Δtest_loss|": abs(ma["test_loss"] - mb["test_loss"]),
        "|Δtest_acc|": abs(ma["test_acc"] - mb["test_acc"]),
        "max|Δval_loss|": max(abs(x["val_loss"] - y["val_loss"]) for x, y in zip(ha, hb, strict=True)),
        "max|Δtrain_loss|": max(abs(x["train_loss"] - y["train_loss"]) for x, y in zip(ha, hb, strict=True)),
        "test_acc (1 proc)": ma["test_acc"],
    }


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, gloo on CPU")
    for name in names or list(CASES):
        with tempfile.TemporaryDirectory() as tmp:
            t1 = train(Path(tmp), CASES[name], 1)
            t2 = train(Path(tmp), CASES[name], 2)
            row = compare(Path(tmp) / "p1", Path(tmp) / "p2")
        figures = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
        print(f"{name:10s} {figures}  (wall: 1 proc {t1:.1f}s, 2 procs {t2:.1f}s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", choices=list(CASES), help="default: all")
    main(parser.parse_args().cases)

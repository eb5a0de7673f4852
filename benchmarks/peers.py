"""The same training job in tricklab, PyTorch Lightning and Keras 3 (torch backend): epoch time and accuracy.

The job: standardized MNIST (tricklab's split: 54,000 train, 6,000 validation, 10,000 test), a 784-512-512-10
ReLU MLP, Adam 1e-3, batch 128, shuffled every epoch, validation after every epoch, the same number of torch
threads for all three. Each framework is used the way its documentation shows:

- tricklab: ``tricklab.runner.run`` with the config (``schedule.name=constant`` to match the others).
- Lightning: a ``LightningModule`` with ``configure_optimizers`` returning Adam, a ``DataLoader`` over a
  ``TensorDataset`` (shuffle=True, batch 128, num_workers=0 — the data is in memory), ``Trainer(max_epochs=E,
  accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)``.
- Keras 3 (``KERAS_BACKEND=torch``): ``Sequential`` of ``Dense`` layers, ``model.fit(x, y, batch_size=128,
  epochs=E, validation_data=..., shuffle=True, verbose=0)`` on NumPy arrays.

Each repetition trains every framework for ``--epochs`` epochs, in a rotating order; an epoch's time is taken
from its own callbacks (training plus validation); the first epoch of each run (warm-up) is dropped. Printed per
framework: the median epoch time, the median test accuracy, and tricklab's speed-up over each. Install the
peers with ``pip install -c constraints.txt -e '.[bench]'``. Not a test: timings on shared machines are noisy.

    TRICKLAB_DATA=../shared/data .venv/bin/python benchmarks/peers.py --reps 3 --epochs 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tricklab.assembly import load_data  # noqa: E402
from tricklab.config import load_config  # noqa: E402
from tricklab.events import Callback  # noqa: E402
from tricklab.runner import run  # noqa: E402

BATCH, LR, WIDTH = 128, 1e-3, 512


def base_config(epochs: int, threads: int, dataset: str, seed: int):
    return load_config(
        overrides={
            "data.name": dataset,
            "train.epochs": epochs,
            "train.threads": threads,
            "train.device": "cpu",
            "train.seed": seed,
            "schedule.name": "constant",
            "optim.name": "adam",
            "optim.lr": LR,
            "data.batch_size": BATCH,
        }
    )


def tricklab_job(cfg, splits) -> tuple[list[float], float]:
    times: list[float] = []

    class Clock(Callback):
        order = -10_000

        def on_epoch_start(self, state):
            self.t = time.perf_counter()

        def on_epoch_end(self, state):  # after validation
            times.append(time.perf_counter() - self.t)

    result = run(cfg, write=False, callbacks=[Clock()])
    return times, result.metrics["test_acc"]


def lightning_job(cfg, splits) -> tuple[list[float], float]:
    import lightning as L
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(cfg.train.seed)
    d_in = splits.train.x[0].numel()
    times: list[float] = []

    class MLP(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Flatten(),
                nn.Linear(d_in, WIDTH),
                nn.ReLU(),
                nn.Linear(WIDTH, WIDTH),
                nn.ReLU(),
                nn.Linear(WIDTH, 10),
            )

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            out = self(x)
            self.log("val_loss", nn.functional.cross_entropy(out, y))
            self.log("val_acc", (out.argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=LR)

    class Clock(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            self.t = time.perf_counter()

        def on_validation_epoch_end(self, trainer, module):
            if not trainer.sanity_checking:
                times.append(time.perf_counter() - self.t)

    train = DataLoader(TensorDataset(splits.train.x, splits.train.y), batch_size=BATCH, shuffle=True)
    val = DataLoader(TensorDataset(splits.val.x, splits.val.y), batch_size=1024)
    model = MLP()
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Clock()],
    )
    trainer.fit(model, train, val)
    model.eval()
    with torch.no_grad():
        acc = (model(splits.test.x).argmax(1) == splits.test.y).float().mean().item()
    return times, acc


def keras_job(cfg, splits) -> tuple[list[float], float]:
    import keras

    keras.utils.set_random_seed(cfg.train.seed)
    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):  # after validation
            times.append(time.perf_counter() - self.t)

    x = splits.train.x.reshape(len(splits.train.x), -1).numpy()
    xv = splits.val.x.reshape(len(splits.val.x), -1).numpy()
    xt = splits.test.x.reshape(len(splits.test.x), -1).numpy()
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(WIDTH, activation="relu"),
            keras.layers.Dense(WIDTH, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(LR),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        x,
        splits.train.y.numpy(),
        batch_size=BATCH,
        epochs=cfg.train.epochs,
        validation_data=(xv, splits.val.y.numpy()),
        shuffle=True,
        verbose=0,
        callbacks=[Clock()],
    )
    logits = model.predict(xt, batch_size=1024, verbose=0)
    acc = float((np.asarray(logits).argmax(1) == splits.test.y.numpy()).mean())
    return times, acc


JOBS = {"tricklab": tricklab_job, "lightning": lightning_job, "keras": keras_job}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--only", nargs="+", default=list(JOBS), choices=list(JOBS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    epoch_times: dict[str, list[float]] = {k: [] for k in args.only}
    accs: dict[str, list[float]] = {k: [] for k in args.only}
    for rep in range(args.reps):
        cfg = base_config(args.epochs, args.threads, args.dataset, seed=rep)
        splits = load_data(cfg)
        order = args.only[rep % len(args.only) :] + args.only[: rep % len(args.only)]  # rotate who goes first
        for name in order:
            torch.set_num_threads(args.threads)
            times, acc = JOBS[name](cfg, splits)
            epoch_times[name] += times[1:]  # the first epoch warms up
            accs[name].append(acc)
            print(f"rep {rep} {name:9s} epochs {[round(t, 2) for t in times]}  test acc {acc:.4f}", flush=True)
    print(f"\n{args.dataset}, {args.threads} threads, {args.reps} reps × {args.epochs} epochs (first epoch dropped)")
    med = {k: statistics.median(v) for k, v in epoch_times.items()}
    for name in args.only:
        line = f"  {name:9s} median epoch {med[name]:6.2f}s  median test acc {statistics.median(accs[name]):.4f}"
        if name != "tricklab" and "tricklab" in med:
            line += f"  tricklab is {med[name] / med['tricklab']:.2f}× faster"
        print(line)


if __name__ == "__main__":
    main()

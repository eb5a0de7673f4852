"""Run a whole config: data → model → tricks → ``fit()`` → test evaluation, written into a run directory.

A run directory holds ``config.yaml`` (the resolved config), ``history.jsonl`` (one JSON object per epoch,
appended as each epoch ends), ``metrics.json`` (final test metrics), ``scaler.json`` (the input scaling
fitted on the training split) and ``model.safetensors`` (the final weights; safetensors never runs code).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tricklab.config import Config
from tricklab.data import Splits, load_splits
from tricklab.data.download import atomic_write
from tricklab.errors import TrickLabError
from tricklab.events import Callback, FitState
from tricklab.models import build_model
from tricklab.train.loop import evaluate, fit
from tricklab.train.seed import resolve_device, seed_everything, set_threads
from tricklab.train.setup import build_callbacks, build_optimizer


@dataclass
class RunResult:
    config: Config
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    run_dir: Path | None = None
    model: torch.nn.Module | None = field(default=None, repr=False)


class HistoryWriter(Callback):
    """Append each epoch's row to ``history.jsonl`` as soon as the epoch ends (a kill loses no epoch)."""

    order = 1000

    def __init__(self, path: Path):
        self.path = path

    def on_epoch_end(self, state: FitState) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(state.metrics) + "\n")
            f.flush()
            os.fsync(f.fileno())


def default_run_dir(cfg: Config, base: Path = Path("runs")) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base / f"{stamp}-{cfg.data.name}-{cfg.model.name}"
    i = 1
    while path.exists():
        i += 1
        path = base / f"{stamp}-{cfg.data.name}-{cfg.model.name}-{i}"
    return path


def check_run_dir(path: Path) -> None:
    """Refuse to write into a folder that already holds a run or other files."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise TrickLabError(f"--out {str(path)!r} already exists and is not empty; choose a new run directory")


def prepare(cfg: Config) -> tuple[Splits, torch.nn.Module, torch.Generator, torch.device]:
    """Everything that can fail on bad input, done before any file is written."""
    set_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    generator = seed_everything(cfg.train.seed)
    d = cfg.data
    splits = load_splits(d.name, root=d.dir, val_fraction=d.val_fraction, scale=d.scale, subset=d.subset, seed=cfg.train.seed)
    m = cfg.model.model_dump(exclude={"name"})
    try:
        model = build_model(cfg.model.name, splits.info.input_shape, splits.info.num_classes, **m)
    except ValueError as e:
        raise TrickLabError(f"model: {e}") from None
    return splits, model, generator, device


def run(cfg: Config, out: str | Path | None = None, *, callbacks: list[Callback] = (), write: bool = True) -> RunResult:
    """Train ``cfg`` end to end; with ``write``, into run directory ``out`` (default: a new folder under runs/)."""
    run_dir = Path(out) if out is not None else default_run_dir(cfg) if write else None
    if run_dir is not None:
        check_run_dir(run_dir)
    splits, model, generator, device = prepare(cfg)
    optimizer = build_optimizer(cfg, model)
    cbs = list(build_callbacks(cfg, splits)) + list(callbacks)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", cfg.to_yaml().encode())
        atomic_write(run_dir / "scaler.json", json.dumps(splits.scaler.to_dict()).encode())
        cbs.append(HistoryWriter(run_dir / "history.jsonl"))
    start = time.perf_counter()
    state = fit(
        model, splits.train, splits.val, epochs=cfg.train.epochs, optimizer=optimizer, callbacks=cbs,
        device=device, batch_size=cfg.data.batch_size, generator=generator,
    )
    final = state.eval_model or model
    test = evaluate(final, splits.test, device=device)
    metrics: dict[str, Any] = {
        "test_loss": test["loss"], "test_acc": test["acc"], "epochs_run": state.epoch, "steps": state.step,
        "wall_time_s": time.perf_counter() - start, "config_hash": cfg.hash(),
    }
    if state.history:
        last = state.history[-1]
        metrics.update({k: last[k] for k in ("val_loss", "val_acc") if k in last})
    if state.stop_reason:
        metrics["stop_reason"] = state.stop_reason
    if run_dir is not None:
        atomic_write(run_dir / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
        tensors = {k: v.detach().cpu().contiguous() for k, v in final.state_dict().items()}
        save_file(tensors, str(run_dir / "model.safetensors"))
    return RunResult(cfg, state.history, metrics, run_dir, final)

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
from tricklab.data.base import TensorBatches
from tricklab.data.download import atomic_write
from tricklab.errors import TrickLabError
from tricklab.events import Callback, FitState
from tricklab.models import build_model
from tricklab.train.loop import evaluate, fit
from tricklab.train.seed import resolve_device, seed_everything, set_threads
from tricklab.train.setup import build_callbacks, build_optimizer, initialize
from tricklab.tricks.averaging import evaluate_ensemble
from tricklab.tricks.early_stopping import EarlyStopping


@dataclass
class RunResult:
    config: Config
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    run_dir: Path | None = None
    model: torch.nn.Module | list[torch.nn.Module] | None = field(default=None, repr=False)


class HistoryWriter(Callback):
    """Append each epoch's row to ``history.jsonl`` as soon as the epoch ends (a kill loses no epoch)."""

    order = 1000

    def __init__(self, path: Path, member: int | None = None):
        self.path, self.member = path, member

    def on_epoch_end(self, state: FitState) -> None:
        row = state.metrics if self.member is None else dict(state.metrics, member=self.member)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
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


def load_data(cfg: Config) -> Splits:
    d = cfg.data
    return load_splits(
        d.name, root=d.dir, val_fraction=d.val_fraction, scale=d.scale, subset=d.subset, seed=cfg.train.seed
    )


def make_model(cfg: Config, splits: Splits, seed: int) -> tuple[torch.nn.Module, torch.Generator]:
    """Seed everything with ``seed``, build the model and initialize it; return it and the data-order generator."""
    generator = seed_everything(seed)
    m = cfg.model.model_dump(exclude={"name"})
    try:
        model = build_model(cfg.model.name, splits.info.input_shape, splits.info.num_classes, **m)
    except ValueError as e:
        raise TrickLabError(f"model: {e}") from None
    initialize(cfg, model, splits)
    return model, generator


def prepare(cfg: Config) -> tuple[Splits, torch.nn.Module, torch.Generator, torch.device]:
    """Everything that can fail on bad input, done before any file is written."""
    set_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    splits = load_data(cfg)
    model, generator = make_model(cfg, splits, cfg.train.seed)
    return splits, model, generator, device


def _member_summary(state: FitState, callbacks: list[Callback]) -> dict[str, Any]:
    out: dict[str, Any] = {"epochs_run": state.epoch, "steps": state.step}
    vals = [r["val_acc"] for r in state.history if "val_acc" in r]
    if vals:
        out["best_val_acc"] = max(vals)
        out["val_acc"], out["val_loss"] = state.history[-1]["val_acc"], state.history[-1]["val_loss"]
    for cb in callbacks:
        if isinstance(cb, EarlyStopping):
            out.update(best_epoch=cb.best_epoch, stopped_epoch=cb.stopped_epoch, restored_best=cb.restored)
    if state.stop_reason:
        out["stop_reason"] = state.stop_reason
    return out


def run(cfg: Config, out: str | Path | None = None, *, callbacks: list[Callback] = (), write: bool = True) -> RunResult:
    """Train ``cfg`` end to end; with ``write``, into run directory ``out`` (default: a new folder under runs/).

    With ``averaging.ensemble = K > 1``, K members are trained with seeds ``seed, seed+1, ...``; the test
    metrics are those of their averaged predicted probabilities, and each member's are listed too.
    """
    run_dir = Path(out) if out is not None else default_run_dir(cfg) if write else None
    if run_dir is not None:
        check_run_dir(run_dir)
    set_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    splits = load_data(cfg)
    k_members = cfg.averaging.ensemble
    model, generator = make_model(cfg, splits, cfg.train.seed)
    optimizer, tricks = build_optimizer(cfg, model), build_callbacks(cfg, splits)  # may still refuse the config
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", cfg.to_yaml().encode())
        atomic_write(run_dir / "scaler.json", json.dumps(splits.scaler.to_dict()).encode())
    start = time.perf_counter()
    history: list[dict[str, Any]] = []
    members: list[dict[str, Any]] = []
    finals: list[torch.nn.Module] = []
    for k in range(k_members):
        if k > 0:
            model, generator = make_model(cfg, splits, cfg.train.seed + k)
            optimizer, tricks = build_optimizer(cfg, model), build_callbacks(cfg, splits)
        cbs = tricks + list(callbacks)
        if run_dir is not None:
            cbs.append(HistoryWriter(run_dir / "history.jsonl", member=k if k_members > 1 else None))
        state = fit(
            model,
            splits.train,
            splits.val,
            epochs=cfg.train.epochs,
            optimizer=optimizer,
            callbacks=cbs,
            device=device,
            batch_size=cfg.data.batch_size,
            generator=generator,
        )
        final = state.eval_model or model
        test = evaluate(final, splits.test, device=device)
        members.append({"test_loss": test["loss"], "test_acc": test["acc"], **_member_summary(state, tricks)})
        history += [dict(r, member=k) if k_members > 1 else r for r in state.history]
        finals.append(final)
    metrics: dict[str, Any] = dict(members[0])
    if k_members > 1:
        ens = evaluate_ensemble(finals, TensorBatches(splits.test.x.to(device), splits.test.y.to(device), 1024))
        metrics = {
            "test_loss": ens["loss"],
            "test_acc": ens["acc"],
            "ensemble": k_members,
            "member_test_acc_mean": sum(m["test_acc"] for m in members) / k_members,
            "best_val_acc": max(m.get("best_val_acc", float("nan")) for m in members),
            "epochs_run": sum(m["epochs_run"] for m in members),
            "members": members,
        }
    metrics.update(wall_time_s=time.perf_counter() - start, config_hash=cfg.hash())
    if run_dir is not None:
        atomic_write(run_dir / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
        for k, final in enumerate(finals):
            name = "model.safetensors" if k_members == 1 else f"model_member{k}.safetensors"
            tensors = {n: v.detach().cpu().contiguous() for n, v in final.state_dict().items()}
            save_file(tensors, str(run_dir / name))
    return RunResult(cfg, history, metrics, run_dir, finals[0] if k_members == 1 else finals)

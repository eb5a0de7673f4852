"""Run a whole config: data → model → tricks → ``fit()`` → test evaluation, written into a run directory.

What is built comes from :mod:`tricklab.assembly`; what a run directory holds and how it is named and found
again is :mod:`tricklab.engine.rundir`. Every file but the history is written atomically.

``run(cfg, run_dir, resume=True)`` continues a run from its newest valid checkpoint (each ensemble member
from its own), with ``history.jsonl`` cut back to the checkpoint's epoch. While a run trains, SIGINT and
SIGTERM stop it at the next step boundary with a checkpoint (exit 130/143 from the CLI).

A run never ends looking like a success when it blew up. NaN/Inf stops it (:class:`NonFiniteError`, exit 3);
a run that stayed finite but blew up — the reported model's test loss above 100 × ln(C), the loss of a uniform
guess, and above its own before training (the rule and why: :func:`tricklab.engine.loop.blown_up`) — is written
in full, its metrics (and each such ensemble member's) marked ``diverged: true``, and then raises
:class:`DivergedError` (exit 3, ``error: diverged: ...``). With ``record_divergence`` (the lab) both are results
marked ``diverged`` instead.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from tricklab.assembly import Assembled, assemble
from tricklab.config import Config, read_yaml, validate
from tricklab.data.base import Splits, TensorBatches, TensorData
from tricklab.engine import distributed
from tricklab.engine.checkpoint import Checkpointer, CheckpointError, StopSignals, check_state, read_checkpoint
from tricklab.engine.loop import DivergedError, NonFiniteError, blown_up, evaluate, fit
from tricklab.engine.placement import channels_last, eval_batch_size, place_model, place_splits
from tricklab.engine.rundir import (
    CHECKPOINTS,
    CSVWriter,
    HistoryWriter,
    check_run_dir,
    checkpoint_folder,
    discard,
    first_missing,
    is_empty,
    new_dir_name,
    note,
    run_checkpoints,
)
from tricklab.errors import TrickLabError
from tricklab.events import Callback, FitState
from tricklab.integrations.loggers import Loggers
from tricklab.locks import folder_lock
from tricklab.outputs import atomic_write
from tricklab.plugins import NotAllowedError
from tricklab.tricks.averaging import evaluate_ensemble
from tricklab.tricks.early_stopping import EarlyStopping

#: The test loss before training (the blow-up rule's reference, :func:`tricklab.engine.loop.blown_up`) is taken
#: on the first this many test examples: a reference, not a result, and a full pass costs about a second.
INITIAL_LOSS_EXAMPLES = 2048


@dataclass
class RunResult:
    """One run's outcome: its config, one history row per epoch, the final metrics, where it was written and the
    trained model (a list for an ensemble). Renders as a table and a curve in Jupyter."""

    config: Config
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    run_dir: Path | None = None
    model: torch.nn.Module | list[torch.nn.Module] | None = field(default=None, repr=False)

    def _repr_html_(self) -> str:
        from tricklab.report.run import run_html

        return run_html(self)


def _prior_acc(labels: torch.Tensor) -> float:
    """The share of the most common class in ``labels``: the accuracy of always answering it (chance level)."""
    labels = torch.as_tensor(labels).reshape(-1).long()
    return float(torch.bincount(labels).max() / len(labels)) if len(labels) else math.nan


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


def run(
    cfg: Config,
    out: str | Path | None = None,
    *,
    callbacks: list[Callback] = (),
    write: bool = True,
    resume: bool = False,
    record_divergence: bool = False,
    loggers: Loggers | None = None,
) -> RunResult:
    """Train ``cfg`` end to end; with ``write``, into run directory ``out`` (default: a new folder under runs/).

    With ``averaging.ensemble = K > 1``, K members are trained with seeds ``seed, seed+1, ...``; the test
    metrics are those of their averaged predicted probabilities, and each member's are listed too.
    ``resume``: ``out`` is an existing run directory whose config is ``cfg`` (see :func:`stored_config`);
    each member continues from its newest valid checkpoint, or starts afresh if it has none.
    ``record_divergence``: a NaN/Inf that stops training (``train.nonfinite``) is a result, not an error: the
    model as it was before the bad update is evaluated and the metrics say ``diverged`` (the lab uses this, since
    "this setup diverges" is what some studies show).
    A bad-input error (exit code 2) raised before the first checkpoint leaves no run directory behind.
    The run directory is locked while the run writes it (:mod:`tricklab.locks`): a second process is refused.
    ``loggers``: the trackers to log to (:mod:`tricklab.integrations.loggers`), started here with the run
    directory and left open for the caller to log more (the doctor's verdicts) and finish; by default those of
    ``train.loggers``, finished here with the final metrics (status ``FAILED`` when the run raised).
    """
    own = loggers is None
    if own:  # a logger whose package is missing is refused here, before anything is written
        loggers = Loggers(cfg.train.loggers if distributed.is_main() else ())
    try:
        result = _locked_run(cfg, out, list(callbacks), write, resume, record_divergence, loggers)
    except DivergedError as e:
        if own:
            loggers.finish(e.result.metrics, "FAILED")
        raise
    except BaseException:
        if own:
            loggers.finish(None, "FAILED")
        raise
    if own:
        loggers.finish(result.metrics)
    return result


def _locked_run(
    cfg: Config,
    out: str | Path | None,
    callbacks: list[Callback],
    write: bool,
    resume: bool,
    record_divergence: bool,
    loggers: Loggers,
) -> RunResult:
    run_dir = Path(out) if out is not None else default_run_dir(cfg) if write else None
    if distributed.is_distributed():  # DDP: rank 0's run directory (a default name holds the time)
        run_dir = distributed.broadcast(run_dir)
    if resume and (run_dir is None or not run_dir.is_dir()):
        raise TrickLabError(f"cannot resume {str(out)!r}: not a run directory")
    if not distributed.is_main():  # DDP: only rank 0 checks, locks and writes the run directory
        return _run(cfg, run_dir, list(callbacks), resume, record_divergence, loggers)
    if run_dir is not None and not resume:
        check_run_dir(run_dir)
    fresh = run_dir is not None and not resume
    created = first_missing(run_dir) if fresh else None
    with folder_lock(run_dir) if run_dir is not None else nullcontext():  # one process per run directory
        if fresh:
            check_run_dir(run_dir)  # again, locked: another process may have finished a run there meanwhile
        try:
            return _run(cfg, run_dir, list(callbacks), resume, record_divergence, loggers)
        except BaseException as e:
            bad_input = isinstance(e, TrickLabError) and e.exit_code == 2 and not isinstance(e, CheckpointError)
            if fresh and run_dir.exists() and not run_checkpoints(run_dir) and (bad_input or is_empty(run_dir)):
                discard(run_dir, created)  # bad input (not a full disk), or nothing written yet
            raise


def _resume_member(
    saver: Checkpointer, state: FitState, history_path: Path, rows: list[dict], member: int | None
) -> FitState | None:
    """Restore ``saver``'s newest valid checkpoint into ``state`` (None: there is none, start afresh) and
    rewrite history.jsonl as ``rows`` (earlier members) plus the checkpoint's own, so no epoch is there twice.
    DDP: rank 0 chooses the checkpoint (removing invalid newer ones) and the other ranks restore that one."""
    if not distributed.is_main():
        path = distributed.broadcast(None)
        if path is None:
            return None
        saver.restore(check_state(read_checkpoint(path), path), state, path)
        return state
    found = saver.resume_latest(state)
    if distributed.is_distributed():
        distributed.broadcast(found[0] if found is not None else None)
    if found is not None:
        for message in found[1]:
            note(message)
        where = (
            f"{state.batches_done} batches into epoch {state.epoch}" if state.batches_done else f"epoch {state.epoch}"
        )
        note(f"resuming from {found[0]} ({where})")
        rows = rows + [r if member is None else dict(r, member=member) for r in state.history]
    atomic_write(history_path, "".join(json.dumps(r) + "\n" for r in rows).encode())
    return state if found is not None else None


def _stored_config_file(cfg: Config, run_dir: Path) -> Path | None:
    """``run_dir/config.yaml`` when it holds ``cfg`` (as when ``--resume`` read it), else None: a checkpoint
    that does not match ``cfg`` then names the file, edited since the run started, as the cause."""
    path = run_dir / "config.yaml"
    try:
        return path if validate(read_yaml(path), like=cfg).hash() == cfg.hash() else None
    except TrickLabError:
        return None


def _checkpointer(
    cfg: Config,
    run_dir: Path,
    member: int,
    tricks: list[Callback],
    generator: torch.Generator,
    signals: StopSignals,
    config_file: Path | None = None,
    write: bool = True,
    train_examples: int | None = None,
) -> Checkpointer:
    """Checkpoints as ``checkpoint.*`` asks; the best epoch by early stopping's monitor, else by val_acc.

    ``train_examples``: the size of the training set, whose ⌈n / batch size⌉ batches an epoch bound the position a
    checkpoint may claim (an upper bound: a merged last batch or a DDP shard makes an epoch shorter, never longer).
    """
    return Checkpointer(
        checkpoint_folder(run_dir, member, cfg.averaging.ensemble),
        callbacks=tricks,
        generator=generator,
        every=cfg.checkpoint.every,
        keep_last=cfg.checkpoint.keep_last,
        monitor=cfg.early_stopping.monitor if cfg.early_stopping.enabled else "val_acc",
        config_hash=cfg.hash(),
        signals=signals,
        resume_hint=f"tricklab train --resume {run_dir}",
        config_file=config_file,
        write=write,
        steps_per_epoch=math.ceil(train_examples / cfg.data.batch_size) if train_examples else None,
    )


def _run(
    cfg: Config,
    run_dir: Path | None,
    extra: list[Callback],
    resume: bool,
    record_divergence: bool = False,
    loggers: Loggers | None = None,
) -> RunResult:
    """Assemble ``cfg``, open its run folder, train each member (:func:`_train_member`), then combine, write and
    return the results (:func:`_combine`, :func:`_write_results`)."""
    parts: Assembled = assemble(cfg)  # may still refuse the config: before anything is written
    nhwc = channels_last(parts.model, parts.device)  # CPU conv nets: channels-last layout (engine/placement.py)
    splits, where = place_splits(parts.splits, parts.device, nhwc=nhwc)  # CUDA: the dataset on the GPU if it fits
    main = distributed.is_main()  # DDP: only rank 0 writes
    extra = _open_run(cfg, run_dir, splits, resume, main, loggers, extra)
    start = time.perf_counter()
    run = _Run(cfg, run_dir, parts.device, splits, where, resume, record_divergence, main, extra)
    with StopSignals() if run_dir is not None else nullcontext() as signals:
        run.signals = signals
        run.config_file = _stored_config_file(cfg, run_dir) if resume else None
        for k in range(cfg.averaging.ensemble):
            run.members.append(_train_member(run, parts.member(k) if k > 0 else parts, k))
    metrics = _combine(run, start)
    if run_dir is not None and main:
        _write_results(run_dir, metrics, [m.final for m in run.members])
    distributed.barrier()  # DDP: the run ends on every rank once rank 0 has written it
    finals = [m.final for m in run.members]
    result = RunResult(cfg, run.history, metrics, run_dir, finals[0] if len(finals) == 1 else finals)
    blowups = [m.blown for m in run.members if m.blown is not None]
    if blowups and not record_divergence:  # written in full, and still never a success
        kept = f"; results kept in {str(run_dir)!r} (metrics.json: diverged: true)" if run_dir is not None else ""
        err = DivergedError(f"diverged: {'; '.join(blowups)}; test accuracy {metrics['test_acc']:.4f}{kept}")
        err.result = result
        raise err
    return result


def _open_run(
    cfg: Config,
    run_dir: Path | None,
    splits: Splits,
    resume: bool,
    main: bool,
    loggers: Loggers | None,
    extra: list[Callback],
) -> list[Callback]:
    """Write a new run folder's config, scaler and hparams; start the loggers and record a DDP job; return the
    callbacks every member gets (``extra`` and the loggers')."""
    if run_dir is not None and not resume and main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", cfg.to_yaml().encode())
        atomic_write(run_dir / "scaler.json", json.dumps(splits.scaler.to_dict()).encode())
        atomic_write(run_dir / "hparams.yaml", cfg.to_yaml().encode())  # beside metrics.csv, as Lightning's
    if loggers and main:
        for lg in loggers.loggers:
            if not lg.opened:
                lg.start(cfg.to_dict(), run_dir)
        extra = [*extra, *loggers.callbacks]
    if run_dir is not None and main:  # DDP: the world size and torchrun job of the run (see distributed.py)
        for message in distributed.record_job(run_dir, resume):
            note(message)
    return extra


@dataclass
class _Member:
    """One trained member: its summary (test loss and accuracy, epochs, ...), its final model, why it blew up."""

    summary: dict[str, Any]
    final: torch.nn.Module
    blown: str | None


@dataclass
class _Run:
    """What every member of one run shares while it trains, and what the members have given so far."""

    cfg: Config
    run_dir: Path | None
    device: torch.device
    splits: Splits
    where: str  # placement of the data: "host", "device" or "pinned"
    resume: bool
    record_divergence: bool
    main: bool
    extra: list[Callback]
    signals: Any = None
    config_file: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    members: list[_Member] = field(default_factory=list)


def _train_member(run: _Run, parts: Assembled, k: int) -> _Member:
    """Train member ``k`` (the run itself when there is one): checkpoints, history writers and resume, ``fit``, its
    test evaluation; its history rows go to ``run.history``."""
    cfg, splits, device, run_dir = run.cfg, run.splits, parts.device, run.run_dir
    k_members = cfg.averaging.ensemble
    model, optimizer, tricks, generator, precision = (
        parts.model, parts.optimizer, parts.callbacks, parts.generator, parts.precision
    )  # fmt: skip
    if precision.scaler is not None:  # fp16: the scaler's state is checkpointed with the tricks'
        tricks = [*tricks, precision]
    model = distributed.prepare_model(model, device, cfg.model.sync_bn)  # DDP: SyncBatchNorm if asked
    cbs = tricks + run.extra
    state = None
    place_model(model, device)
    if cfg.train.compile:  # in place: the weights, their names and the checkpoints stay the model's own
        model.compile()
    head = TensorData(splits.test.x[:INITIAL_LOSS_EXAMPLES], splits.test.y[:INITIAL_LOSS_EXAMPLES])
    initial = evaluate(model, head, device=device, precision=precision)["loss"]  # see blown_up
    if run_dir is not None:
        member = k if k_members > 1 else None
        saver = _checkpointer(
            cfg, run_dir, k, tricks, generator, run.signals, run.config_file,
            write=run.main, train_examples=len(splits.train),
        )  # fmt: skip
        writers = [HistoryWriter(run_dir / "history.jsonl", member), CSVWriter(run_dir / "metrics.csv", member)]
        cbs += [*writers, saver] if run.main else [saver]
        if run.resume:
            place_model(model, device)  # before the optimizer state is loaded next to the parameters
            state = FitState(model=model, optimizer=optimizer, epochs=cfg.train.epochs, device=device)
            state = _resume_member(saver, state, run_dir / "history.jsonl", run.history, member)
    if state is None and run.record_divergence:
        state = FitState(model=model, optimizer=optimizer, epochs=cfg.train.epochs, device=device)
    diverged = None
    try:
        state = fit(
            model, splits.train, splits.val,
            epochs=cfg.train.epochs, optimizer=optimizer, callbacks=cbs, device=device,
            batch_size=cfg.data.batch_size, generator=generator, state=state,
            nonfinite=cfg.train.nonfinite, nonfinite_limit=cfg.train.nonfinite_limit, precision=precision,
            pin_memory=run.where == "pinned", ddp=distributed.DDP(device) if distributed.is_distributed() else None,
        )  # fmt: skip
    except NonFiniteError as e:
        if not run.record_divergence:
            raise
        diverged = str(e)
        state.stop_reason = f"diverged: {e}"
    final = state.eval_model or model
    test = evaluate(final, splits.test, device=device, precision=precision)
    summary = {"test_loss": test["loss"], "test_acc": test["acc"], **_member_summary(state, tricks)}
    blown = None if diverged is not None else blown_up(test["loss"], splits.info.num_classes, initial)
    if diverged is not None or blown is not None:
        summary.update(diverged=True, epochs_run=state.epoch)
    run.history += [dict(r, member=k) if k_members > 1 else r for r in state.history]
    if blown is not None and k_members > 1:  # finite but blown up: a result the lab records, an error for train
        blown = f"member {k}: {blown}"
    return _Member(summary, final, blown)


def _combine(run: _Run, start: float) -> dict[str, Any]:
    """The run's metrics: its one member's, or an ensemble's (the members' averaged predictions, and each
    member's summary)."""
    members = [m.summary for m in run.members]
    k_members, splits, cfg = len(members), run.splits, run.cfg
    metrics: dict[str, Any] = dict(members[0])
    if k_members > 1:
        device = run.device
        batch = eval_batch_size(run.members[0].final, device)
        test = TensorBatches(splits.test.x.to(device), splits.test.y.to(device), batch)
        ens = evaluate_ensemble([m.final for m in run.members], test)
        metrics = {
            "test_loss": ens["loss"],
            "test_acc": ens["acc"],
            "ensemble": k_members,
            "member_test_acc_mean": sum(m["test_acc"] for m in members) / k_members,
            "best_val_acc": max(m.get("best_val_acc", float("nan")) for m in members),
            "epochs_run": sum(m["epochs_run"] for m in members),
            "members": members,
        }
        if any(m.get("diverged") for m in members):
            metrics["diverged_members"] = sum(1 for m in members if m.get("diverged"))
    metrics.update(wall_time_s=time.perf_counter() - start, config_hash=cfg.hash())
    metrics["test_prior_acc"] = _prior_acc(splits.test.y)  # chance level: the lab's "no signal" compares with it
    return metrics


def _write_results(run_dir: Path, metrics: dict[str, Any], finals: list[torch.nn.Module]) -> None:
    """metrics.json and each member's weights (``model.safetensors``, or ``model_member<k>.safetensors``)."""
    atomic_write(run_dir / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    for k, final in enumerate(finals):
        name = "model.safetensors" if len(finals) == 1 else f"model_member{k}.safetensors"
        tensors = {n: v.detach().cpu().contiguous() for n, v in final.state_dict().items()}
        atomic_write(run_dir / name, safetensors.torch.save(tensors))


def default_run_dir(cfg: Config, command: str = "", base: Path = Path("runs")) -> Path:
    """``runs/<stamp>-[command-]<dataset>-<model>`` (a plugin's import path contributes its last name)."""
    names = [n.rpartition(":")[2].rpartition(".")[2] for n in (cfg.data.name, cfg.model.name)]
    label = "-".join([command, *names] if command else names)
    return new_dir_name("".join(c if c.isalnum() or c in "-_" else "_" for c in label), base)


def stored_config(run_dir: str | Path) -> Config:
    """The config a run directory was written with, for ``--resume`` (its config.yaml, read safely)."""
    run_dir = Path(run_dir)
    allowed = "allowed: a run directory written by tricklab train, or auto"
    if not run_dir.is_dir():
        raise TrickLabError(f"--resume {str(run_dir)!r}: no such run directory ({allowed})")
    if not (run_dir / "config.yaml").is_file():
        raise TrickLabError(f"--resume {str(run_dir)!r}: holds no config.yaml ({allowed})")
    if not run_checkpoints(run_dir):
        raise TrickLabError(
            f"--resume {str(run_dir)!r}: holds no checkpoint in {CHECKPOINTS}/ (it stopped before its first one): "
            "nothing to resume; train it again with a new --out"
        )
    try:
        return validate(read_yaml(run_dir / "config.yaml"))
    except NotAllowedError as e:
        raise TrickLabError(f"--resume {str(run_dir)!r}: {e}") from None
    except TrickLabError as e:
        raise TrickLabError(f"--resume {str(run_dir)!r}: its config.yaml is invalid: {e}") from None

"""Experiment trackers (TensorBoard, MLflow, Weights & Biases) as loggers of runs, doctors and labs.

``train.loggers: [tensorboard, mlflow, wandb]`` (or ``--logger NAME`` on ``train``, ``lab`` and ``doctor``) sends
what a run already records to the trackers practitioners run: the config as parameters, the loss and LR per step,
each epoch's history row, the final test metrics, the run folder as artifacts, the doctor's per-layer statistics and
verdicts, and a lab's table. Each tracker is an extra, imported only here and only when asked for::

    pip install 'tricklab[tensorboard]'     # 'tricklab[mlflow]', 'tricklab[wandb]'
    tricklab train --logger tensorboard --set train.epochs=2

A logger is a :class:`~tricklab.events.Callback` (its ``order`` is after the history row is complete) with a
run-level life: :meth:`TrackerLogger.start` with the run folder, the events while training,
:meth:`~TrackerLogger.doctor` when the doctor ran, :meth:`~TrackerLogger.finish` with the final metrics.
:class:`Loggers` holds the ones a config asks for. A tracker that fails (a full disk, a locked store, a read-only
folder) never breaks the run: the first failure prints one ``warning:`` line naming the logger and the error, and
that logger stops while training goes on.

=================  ============================================  ===========================================
name               where it writes (default)                     what a lab gets
=================  ============================================  ===========================================
``tensorboard``    ``RUN_DIR/tensorboard/`` (``SummaryWriter``)  ``LAB/tensorboard/<study>/<variant>/seed<k>``
                                                                 and the table as text
``mlflow``         ``MLFLOW_TRACKING_URI``, else ``./mlruns``    a parent run, one child run per (variant,
                   (a local file store); experiment              seed), the table on the parent
                   ``MLFLOW_EXPERIMENT_NAME`` or ``tricklab``
``wandb``          ``RUN_DIR/wandb/``; offline (``WANDB_MODE``   one run per (variant, seed) in the lab's
                   = ``offline``) unless an API key is set       group and a ``lab`` run holding the table
=================  ============================================  ===========================================

The doctor's verdicts become W&B alerts (``run.alert``, level ``ERROR`` for non-finite values, ``WARN`` for the
rest); an offline run keeps them in its ``.wandb`` file as alert records, where :func:`wandb_records` reads them.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tricklab.errors import TrickLabError
from tricklab.events import ORDER_HISTORY, Callback, FitState
from tricklab.registry import Registry

#: After the history writer: the epoch's row holds every trick's extras when a logger sends it.
ORDER_LOGGERS = ORDER_HISTORY + 10
#: Per-step values are read from the device in batches of this many steps (one synchronisation per batch).
FLUSH_EVERY = 50

#: Logger name → a factory ``(name) -> TrackerLogger``.
LOGGERS: Registry[Callable[[], TrackerLogger]] = Registry("logger")
#: Logger name → (the module it imports, the extra that installs it).
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
#: The columns of a lab's table as trackers receive it (one record per variant).
TABLE_KEYS = ("variant", "seeds", "test_acc_mean", "ci_lo", "ci_hi", "delta", "delta_lo", "delta_hi", "p", "outcome")


def require(name: str) -> None:
    """Refuse, in one line naming the extra, a logger whose package is not installed (without importing it)."""
    module, extra = PACKAGES[name]
    if importlib.util.find_spec(module) is None:
        raise TrickLabError(
            f"train.loggers: {name!r} needs the {module} package, which is not installed: "
            f"pip install 'tricklab[{extra}]'"
        )


def _import(name: str):
    require(name)
    return importlib.import_module(PACKAGES[name][0])


def flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"optim.lr": 0.001, ...}``; lists and None as their text (what trackers accept)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = "null" if v is None else str(v)
    return out


def _plain(v: Any) -> Any:
    """NaN (no comparison, no interval) as JSON's null."""
    return None if isinstance(v, float) and v != v else v


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The finite-or-not numbers of a row (booleans and text left out)."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TrackerLogger(Callback):
    """One tracker, fed by the training events and by the run, the doctor and the lab; subclasses talk to it.

    Subclasses implement ``_open``, ``_scalars``, ``_close`` and, where the tracker has them, ``_finish``,
    ``_artifacts``, ``_doctor``, ``_steps`` and ``lab``. Every call goes through :meth:`_safe`: the first exception
    disables the logger with one warning line, and the run goes on.
    """

    order = ORDER_LOGGERS
    name = ""

    def __init__(self) -> None:
        self.failed = False
        self.opened = False
        self.run_dir: Path | None = None
        self.config: dict[str, Any] = {}
        self.prefix = ""  # "member{k}/" for an ensemble's members
        self._offset = 0  # an ensemble member's steps follow the previous member's
        self._last_step = 0
        self._members = 0
        self._buffer: list[tuple[int, Any, float]] = []
        self._epoch_keys: set[str] = set()

    # --- the run's life ---------------------------------------------------------------------------------------
    def start(self, config: dict[str, Any], run_dir: Path | None, label: str = "") -> None:
        """Open the tracker's run for ``config`` (a ``Config.to_dict()``) writing into ``run_dir``."""
        self.config, self.run_dir = config, Path(run_dir) if run_dir is not None else None
        self.opened = self._safe("start", self._open, label or (self.run_dir.name if self.run_dir else "tricklab"))

    def finish(self, metrics: dict[str, Any] | None = None, status: str = "FINISHED") -> None:
        """Send the final metrics, the hyperparameters with them, the run folder as artifacts; close the run."""
        if self.opened and not self.failed:
            # the final metrics the epoch rows did not already send (val_acc, val_loss: the last epoch's)
            final = {k: v for k, v in numbers(metrics or {}).items() if k not in self._epoch_keys}
            self._safe("finish", self._finish, final, status)
        if self.opened:
            try:
                self._close(status)
            except Exception:  # a tracker that cannot close has warned already, or failed while closing: nothing to add
                pass
        self.opened = False

    def doctor(self, result: Any) -> None:
        """The doctor's per-layer statistics and its verdicts (a :class:`~tricklab.diagnostics.doctor.DoctorResult`)."""
        if self.opened and not self.failed:
            self._safe("doctor", self._doctor, result)

    # --- training events -------------------------------------------------------------------------------------
    def on_fit_start(self, state: FitState) -> None:
        members = (self.config.get("averaging") or {}).get("ensemble", 1)
        if members > 1:
            self.prefix = f"member{self._members}/"
            self._offset = self._last_step
        self._members += 1

    def on_step_end(self, state: FitState) -> None:
        if not self.opened or self.failed or state.loss is None:
            return
        self._buffer.append((state.step + self._offset, state.loss.detach(), state.lr))
        if len(self._buffer) >= FLUSH_EVERY:
            self._flush()

    def on_epoch_end(self, state: FitState) -> None:
        if not self.opened or self.failed:
            return
        self._flush()
        step = state.step + self._offset
        self._last_step = step
        row = {f"{self.prefix}{k}": v for k, v in numbers(state.metrics).items()}
        self._epoch_keys.update(row)
        self._safe("log", self._scalars, row, step)

    def on_fit_end(self, state: FitState) -> None:
        if self.opened and not self.failed:
            self._flush()
        self._last_step = state.step + self._offset

    def _flush(self) -> None:
        if not self._buffer:
            return
        import torch

        steps, losses, lrs = zip(*self._buffer, strict=True)
        self._buffer = []
        values = torch.stack([v.float().reshape(()) for v in losses]).cpu().tolist()  # one sync for the batch
        rows = [
            (step, {f"{self.prefix}loss_step": loss, f"{self.prefix}lr_step": lr})
            for step, loss, lr in zip(steps, values, lrs, strict=True)
        ]
        self._safe("log", self._steps, rows)

    def _steps(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Several steps' values at once (a tracker with a batch call overrides this)."""
        for step, values in rows:
            self._scalars(values, step)

    # --- failures ---------------------------------------------------------------------------------------------
    def _safe(self, what: str, fn: Callable, *args: Any) -> bool:
        """Call ``fn``; on any exception warn once (one line) and stop this logger. True when it succeeded."""
        if self.failed:
            return False
        try:
            fn(*args)
            return True
        except Exception as e:
            self.failed = True
            text = " ".join(str(e).split())
            text = text if len(text) <= 200 else text[:200].rsplit(" ", 1)[0] + " ..."
            print(
                f"warning: logger {self.name!r} failed ({what}: {type(e).__name__}: {text}); it stops logging, "
                "the run goes on",
                file=sys.stderr,
                flush=True,
            )
            return False

    # --- the tracker (subclasses) -----------------------------------------------------------------------------
    def _open(self, label: str) -> None:
        raise NotImplementedError

    def _scalars(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _finish(self, final: dict[str, float], status: str) -> None:
        self._scalars(final, self._last_step)
        if self.run_dir is not None:
            self._artifacts(self.run_dir)

    def _artifacts(self, run_dir: Path) -> None: ...

    def _doctor(self, result: Any) -> None: ...

    def _close(self, status: str) -> None: ...

    def lab(self, lab_dir: Path, tables: list[dict[str, Any]], runs: list[Any]) -> None:
        """Log a finished lab: its done runs and each study's table (:func:`tricklab.report.trackers.log_lab`);
        trackers without a lab view log nothing."""


def doctor_scalars(result: Any) -> Iterable[tuple[str, str, int, float]]:
    """(metric, layer, step, value) of every number the doctor's probes recorded, histograms left out."""
    from tricklab.diagnostics.records import ACT_HIST

    records = result.findings.records
    for metric, by_layer in records.data.items():
        if metric == ACT_HIST:
            continue
        for layer, points in by_layer.items():
            for step, value in sorted(points.items()):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    yield metric, layer, int(step), float(value)


def doctor_histograms(result: Any) -> Iterable[tuple[str, int, list[float], list[float]]]:
    """(layer, step, bin edges, fractions) of each activation layer's recorded histogram."""
    from tricklab.diagnostics.records import ACT_HIST, hist_range

    kinds = {info.name: info.kind for info in result.findings.layers}
    for layer, points in result.findings.records.data.get(ACT_HIST, {}).items():
        lo_hi = hist_range(kinds.get(layer, ""))
        for step, counts in sorted(points.items()):
            if not counts or lo_hi is None:
                continue
            lo, hi = lo_hi
            n = len(counts)
            edges = [lo + (hi - lo) * i / n for i in range(n + 1)]
            yield layer, int(step), edges, [float(c) for c in counts]


def verdict_level(name: str) -> str:
    """The alert level of a verdict: ``ERROR`` for non-finite values (training cannot go on), else ``WARN``."""
    return "ERROR" if name == "non_finite_values" else "WARN"


def verdict_text(v: Any) -> str:
    """A verdict as one alert's text: its summary, the layers, why, and the prescription as ``--set`` flags."""
    from tricklab.diagnostics.verdicts import as_set_flags

    parts = [v.summary]
    if v.layers:
        parts.append(f"layers: {', '.join(v.layers[:8])}")
    if v.advice:
        parts.append(f"why: {v.advice}")
    if v.prescription:
        parts.append(f"prescription: {as_set_flags(v.prescription)}")
    return "\n".join(parts)


# --- TensorBoard -------------------------------------------------------------------------------------------------
def _quiet_writer_threads() -> None:
    """Keep the traceback of TensorBoard's event-writer thread off the screen when a write fails (a full disk).

    That thread stores the error and raises it again in the training thread at the next write, where the logger
    warns in one line; printed from the thread too, the user would see a traceback for a run that goes on. Every
    other thread's errors reach the previous hook unchanged. Installed once per process.
    """
    import threading

    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    previous = threading.excepthook
    if getattr(previous, "tricklab_quiet", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not isinstance(args.thread, _AsyncWriterThread):
            previous(args)

    hook.tricklab_quiet = True  # type: ignore[attr-defined]
    threading.excepthook = hook


@LOGGERS.register("tensorboard", help="TensorBoard event files in RUN_DIR/tensorboard/ (extra: tensorboard)")
class TensorBoardLogger(TrackerLogger):
    """``torch.utils.tensorboard.SummaryWriter`` into ``RUN_DIR/tensorboard``: scalars per step and epoch, the config
    with the final metrics as hparams, the doctor's statistics as scalars and histograms, its verdicts as text."""

    name = "tensorboard"
    FOLDER = "tensorboard"

    def _open(self, label: str) -> None:
        _import("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        if self.run_dir is None:
            raise TrickLabError("tensorboard: needs a run folder to write its event files into")
        _quiet_writer_threads()
        self.writer = SummaryWriter(log_dir=str(self.run_dir / self.FOLDER))

    def _scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def _finish(self, final: dict[str, float], status: str) -> None:
        self._scalars({f"final/{k}": v for k, v in final.items()}, self._last_step)
        hparams = flat_params(self.config)
        self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in final.items()}, run_name=".")
        self.writer.flush()

    def _doctor(self, result: Any) -> None:
        import numpy as np

        by_step: dict[tuple[str, int], list[float]] = {}
        for metric, layer, step, value in doctor_scalars(result):
            self.writer.add_scalar(f"doctor/{metric}/{layer}", value, step)
            if not layer.startswith("("):
                by_step.setdefault((metric, step), []).append(value)
        for (metric, step), values in sorted(by_step.items()):  # each statistic's spread over the layers
            finite = np.array([v for v in values if math.isfinite(v)])
            if len(finite):
                self.writer.add_histogram(f"doctor/{metric}/layers", finite, step)
        for layer, step, edges, counts in doctor_histograms(result):
            centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
            total = sum(counts)
            self.writer.add_histogram_raw(
                f"doctor/act_hist/{layer}",
                min=edges[0],
                max=edges[-1],
                num=total,
                sum=sum(c * x for c, x in zip(counts, centers, strict=True)),
                sum_squares=sum(c * x * x for c, x in zip(counts, centers, strict=True)),
                bucket_limits=edges[1:],
                bucket_counts=counts,
                global_step=step,
            )
        text = (
            "healthy: no problems found"
            if not result.verdicts
            else "\n\n".join(f"**{v.name}** ({verdict_level(v.name)}): {verdict_text(v)}" for v in result.verdicts)
        )
        self.writer.add_text("doctor/verdicts", text, 0)
        self.writer.flush()

    def _close(self, status: str) -> None:
        if getattr(self, "writer", None) is not None:
            self.writer.close()

    def lab(self, lab_dir: Path, tables: list[dict[str, Any]], runs: list[Any]) -> None:
        _import("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        root = Path(lab_dir) / self.FOLDER
        for r in runs:
            w = SummaryWriter(log_dir=str(root / r.study / r.variant / f"seed{r.seed}"))
            try:
                for row in r.history or []:
                    for k, v in numbers(row).items():
                        w.add_scalar(k, v, int(row.get("epoch", 0)))
                for k, v in numbers(r.metrics or {}).items():
                    w.add_scalar(f"final/{k}", v, 0)
            finally:
                w.close()
        w = SummaryWriter(log_dir=str(root))
        try:
            for study in tables:
                header = "| " + " | ".join(study["columns"]) + " |\n|" + "---|" * len(study["columns"]) + "\n"
                body = "".join("| " + " | ".join(str(c) for c in row) + " |\n" for row in study["rows"])
                w.add_text(f"lab/{study['study']}", header + body, 0)
        finally:
            w.close()


# --- MLflow ------------------------------------------------------------------------------------------------------
def mlflow_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a local file store in ``./mlruns``.

    MLflow 3 keeps its file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is true; for
    a file store (the default here: ``mlflow-skinny`` has no database backend) it is set to true unless the
    environment says otherwise. Browse it with ``mlflow ui --backend-store-uri ./mlruns`` (the full ``mlflow``).
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").absolute().as_uri()
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def mlflow_key(key: str) -> str:
    """A metric or parameter name MLflow accepts (letters, digits, ``_ - . / :`` and spaces)."""
    return "".join(c if c.isalnum() or c in "_-./: " else "_" for c in key)


@LOGGERS.register("mlflow", help="MLflow: MLFLOW_TRACKING_URI, else a local store in ./mlruns (extra: mlflow)")
class MLflowLogger(TrackerLogger):
    """An MLflow run through ``MlflowClient``: params (the flat config), metrics per step and per epoch, the final
    metrics, the run folder as artifacts, the doctor's statistics as metrics and its verdicts as tags and a dict."""

    name = "mlflow"

    def _client(self):
        _import("mlflow")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=mlflow_uri())
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "tricklab"
        found = client.get_experiment_by_name(name)
        return client, found.experiment_id if found is not None else client.create_experiment(name)

    def _open(self, label: str) -> None:
        self.client, experiment = self._client()
        self.run_id = self.client.create_run(experiment, run_name=label, tags={"tricklab": "train"}).info.run_id
        self._params(self.run_id, flat_params(self.config))

    def _params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(mlflow_key(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def _metrics(self, run_id: str, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(mlflow_key(k), v, now, step) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def _scalars(self, values: dict[str, float], step: int) -> None:
        self._metrics(self.run_id, values, step)

    def _steps(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(mlflow_key(k), v, now, s) for s, vals in rows for k, v in vals.items()]
        )

    def _artifacts(self, run_dir: Path) -> None:
        self.client.log_artifacts(self.run_id, str(run_dir))

    def _doctor(self, result: Any) -> None:
        points: dict[int, dict[str, float]] = {}
        for metric, layer, step, value in doctor_scalars(result):
            points.setdefault(step, {})[f"doctor.{metric}.{layer}"] = value
        for step, values in sorted(points.items()):
            self._metrics(self.run_id, values, step)
        self.client.set_tag(self.run_id, "doctor.healthy", str(result.healthy).lower())
        self.client.set_tag(self.run_id, "doctor.verdicts", ",".join(v.name for v in result.verdicts) or "none")
        self.client.log_dict(self.run_id, result.to_dict(), "doctor/doctor.json")

    def _close(self, status: str) -> None:
        if getattr(self, "run_id", None) is not None:
            self.client.set_terminated(self.run_id, status)

    def lab(self, lab_dir: Path, tables: list[dict[str, Any]], runs: list[Any]) -> None:
        self.client, experiment = self._client()
        parent = self.client.create_run(experiment, run_name=f"lab {Path(lab_dir).name}", tags={"tricklab": "lab"})
        pid = parent.info.run_id
        try:
            for r in runs:
                tags = {"mlflow.parentRunId": pid, "tricklab": "lab-run", "study": r.study, "variant": r.variant}
                child = self.client.create_run(
                    experiment, run_name=f"{r.study}/{r.variant}/seed{r.seed}", tags={**tags, "seed": str(r.seed)}
                ).info.run_id
                self._params(child, flat_params(r.config))
                for row in r.history or []:
                    self._metrics(child, numbers(row), int(row.get("epoch", 0)))
                self._metrics(child, numbers(r.metrics or {}), len(r.history or []))
                self.client.set_terminated(child, "FINISHED")
            for study in tables:
                s = mlflow_key(study["study"])
                for row in study["records"]:
                    v = mlflow_key(row["variant"])
                    values = {f"{s}.{v}.{k}": x for k, x in row.items() if isinstance(x, float) and x == x}  # NaN: none
                    self._metrics(pid, values, 0)
                    self.client.set_tag(pid, f"{s}.{v}.outcome", row["outcome"] or "baseline")
                rows = [[_plain(r.get(c)) for c in TABLE_KEYS] for r in study["records"]]  # MLflow's table JSON
                self.client.log_dict(pid, {"columns": list(TABLE_KEYS), "data": rows}, f"lab/{study['study']}.json")
            self.client.set_terminated(pid, "FINISHED")
        except BaseException:
            self.client.set_terminated(pid, "FAILED")
            raise


# --- Weights & Biases ------------------------------------------------------------------------------------------
def wandb_mode() -> str:
    """``WANDB_MODE`` when set; else ``online`` with an API key, ``offline`` without (no account, no network)."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


@LOGGERS.register("wandb", help="Weights & Biases: offline in RUN_DIR/wandb/ without an API key (extra: wandb)")
class WandbLogger(TrackerLogger):
    """A W&B run in ``RUN_DIR/wandb``: the flat config, metrics per step and epoch, the final metrics as summary, the
    run folder as an artifact, the doctor's statistics (against ``doctor/step``) and each verdict as an alert."""

    name = "wandb"

    def _init(self, directory: Path, **kwargs: Any):
        wandb = _import("wandb")
        directory.mkdir(parents=True, exist_ok=True)
        return wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "tricklab",
            dir=str(directory.absolute()),  # the W&B service (shared by the process) has a working folder of its own
            mode=wandb_mode(),
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            **kwargs,
        )

    def _open(self, label: str) -> None:
        where = self.run_dir if self.run_dir is not None else Path(".")
        self.run = self._init(where, name=label, config=flat_params(self.config), job_type="train")

    def _scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def _finish(self, final: dict[str, float], status: str) -> None:
        for k, v in final.items():
            self.run.summary[k] = v
        if self.run_dir is not None:
            import wandb

            art = wandb.Artifact(f"run-{self.run.id}", type="run-folder")
            for p in sorted(self.run_dir.rglob("*")):  # file by file: add_dir prints a line per folder
                rel = p.relative_to(self.run_dir)
                if p.is_file() and rel.parts[0] not in ("wandb", ".tricklab.lock"):
                    art.add_file(str(p), name=rel.as_posix())
            self.run.log_artifact(art)

    def _doctor(self, result: Any) -> None:
        import wandb

        self.run.define_metric("doctor/step")
        self.run.define_metric("doctor/*", step_metric="doctor/step")
        points: dict[int, dict[str, Any]] = {}
        for metric, layer, step, value in doctor_scalars(result):
            points.setdefault(step, {})[f"doctor/{metric}/{layer}"] = value
        for layer, step, edges, counts in doctor_histograms(result):
            points.setdefault(step, {})[f"doctor/act_hist/{layer}"] = wandb.Histogram(np_histogram=(counts, edges))
        for step, values in sorted(points.items()):
            self.run.log({**values, "doctor/step": step}, commit=False)
        self.run.summary["doctor/healthy"] = result.healthy
        self.run.summary["doctor/verdicts"] = [v.name for v in result.verdicts]
        for v in result.verdicts:
            level = getattr(wandb.AlertLevel, verdict_level(v.name))
            self.run.alert(title=f"tricklab doctor: {v.name}", text=verdict_text(v), level=level)

    def _close(self, status: str) -> None:
        if getattr(self, "run", None) is not None:
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)

    def lab(self, lab_dir: Path, tables: list[dict[str, Any]], runs: list[Any]) -> None:
        import wandb

        group = f"lab-{Path(lab_dir).name}"
        where = Path(lab_dir)
        for r in runs:
            run = self._init(
                where,
                name=f"{r.study}/{r.variant}/seed{r.seed}",
                group=group,
                job_type="lab-run",
                config=flat_params(r.config),
                tags=[r.study, r.variant],
            )
            try:
                for row in r.history or []:
                    run.log(numbers(row), step=int(row.get("epoch", 0)))
                for k, v in numbers(r.metrics or {}).items():
                    run.summary[k] = v
            finally:
                run.finish()
        run = self._init(where, name=f"lab {Path(lab_dir).name}", group=group, job_type="lab")
        try:
            for study in tables:
                table = wandb.Table(columns=list(TABLE_KEYS))
                for row in study["records"]:
                    table.add_data(*(row.get(c) for c in TABLE_KEYS))
                run.log({f"lab/{study['study']}": table})
        finally:
            run.finish()


def wandb_records(run_folder: str | Path) -> list[dict[str, Any]]:
    """The records of an offline W&B run's ``.wandb`` file, each as ``{"type": ..., **fields}`` (``history`` rows,
    ``alert``, ``config``, ``summary``, ...): how a test or a user reads back what an offline run recorded.

    The file is a LevelDB-style log (what ``wandb sync`` uploads): a 7-byte header (``:W&B``, magic ``0xBEE1``,
    version 0), then 32 KiB blocks of chunks, each ``crc32 (4) | length (2) | type (1) | data`` with type 1 a whole
    record and 2/3/4 its first/middle/last part; each record is a ``wandb_internal_pb2.Record``. W&B's own process
    writes the file out after ``run.finish()`` returns: a record the file ends inside (not written out yet) is left
    out, and so are the earlier parts of a record split over chunks; read the file again for the rest.
    """
    from google.protobuf.json_format import MessageToDict
    from wandb.proto import wandb_internal_pb2

    files = sorted(Path(run_folder).glob("*.wandb"))
    if not files:
        raise TrickLabError(f"{str(run_folder)!r} holds no .wandb file")
    data = files[0].read_bytes()
    if data[:4] != b":W&B":
        raise TrickLabError(f"{str(files[0])!r} is not a W&B run file")
    block, pos, parts, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):  # still being written
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(parts)
            what = rec.WhichOneof("record_type")
            out.append({"type": what, **MessageToDict(getattr(rec, what))} if what else {"type": None})
    return out


# --- groups of loggers: what a command holds -------------------------------------------------------------------
class Loggers:
    """The loggers a config asks for (``train.loggers``), started together and closed together.

    Example::

        group = Loggers(cfg.train.loggers)       # refuses a logger whose package is missing, in one line
        group.start(cfg.to_dict(), run_dir)
        run(cfg, run_dir, loggers=group)         # the loggers are callbacks of every member's fit()
        group.finish(result.metrics)
    """

    def __init__(self, names: Iterable[str] = ()):
        self.names = list(names)
        for n in self.names:
            LOGGERS.get(n)
            require(n)
        self.loggers: list[TrackerLogger] = [LOGGERS.get(n)() for n in self.names]

    def __bool__(self) -> bool:
        return bool(self.loggers)

    @property
    def callbacks(self) -> list[Callback]:
        return list(self.loggers)

    def start(self, config: dict[str, Any], run_dir: Path | None, label: str = "") -> None:
        for lg in self.loggers:
            lg.start(config, run_dir, label)

    def doctor(self, result: Any) -> None:
        for lg in self.loggers:
            lg.doctor(result)

    def finish(self, metrics: dict[str, Any] | None = None, status: str = "FINISHED") -> None:
        for lg in self.loggers:
            lg.finish(metrics, status)

    def lab(self, lab_dir: Path, tables: list[dict[str, Any]], runs: list[Any]) -> None:
        """Each logger logs a finished lab; one that fails warns once and the others go on."""
        for lg in self.loggers:
            lg._safe("lab", lg.lab, lab_dir, tables, runs)

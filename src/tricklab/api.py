"""The public functions behind ``import tricklab``: run a config, diagnose any model, run a lab, register plugins.

Each is a thin door onto the same code the CLI runs (:mod:`tricklab.assembly`, :mod:`tricklab.train.run`,
:mod:`tricklab.diagnostics.doctor`, :mod:`tricklab.lab`); bad input raises :class:`tricklab.ConfigError` or
:class:`tricklab.TrickLabError` with the same one-line messages the CLI prints.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tricklab.config import Config, load_config, validate
from tricklab.errors import TrickLabError, wrong_type
from tricklab.outputs import Kind, write_file

ConfigLike = Config | Mapping[str, Any] | str | Path | None


def as_config(config: ConfigLike = None, overrides: Mapping[str, Any] | Iterable[str] = ()) -> Config:
    """A :class:`Config` from a ``Config``, a mapping of sections, a YAML file's path or None (the defaults),
    with ``overrides`` (``{"optim.lr": 0.01}`` or ``["optim.lr=0.01"]``) applied and validated."""
    overrides = dict(overrides) if isinstance(overrides, Mapping) else list(overrides)
    if config is None or isinstance(config, (str, Path)):
        return load_config(config, overrides)
    if isinstance(config, Config):
        return config.with_overrides(overrides) if overrides else config
    if isinstance(config, Mapping):
        cfg = validate(_plain(config))
        return cfg.with_overrides(overrides) if overrides else cfg
    raise TrickLabError(f"config: got a {type(config).__name__}; expected a Config, a mapping, a YAML path or None")


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    """Nested mappings as dicts, and dotted keys (``"model.depth": 3``) expanded into sections."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        v = _plain(v) if isinstance(v, Mapping) and k not in ("kwargs",) else v
        node, parts = out, str(k).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TrickLabError(f"config: {k!r} sets a key inside {part!r}, which is a value")
        if isinstance(node.get(parts[-1]), dict) and isinstance(v, dict):
            twice = set(node[parts[-1]]) & set(v)
            if twice:
                raise TrickLabError(f"config: {k}.{sorted(twice)[0]} is set twice, nested and dotted; keep one")
            node[parts[-1]].update(v)
        elif parts[-1] in node:
            raise TrickLabError(f"config: {k} is set twice, nested and dotted; keep one of them")
        else:
            node[parts[-1]] = v
    return out


def run(
    config: ConfigLike = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
    *,
    out: str | Path | None = None,
    write: bool = True,
    callbacks: Iterable[Any] = (),
    progress: bool = False,
):
    """Train a whole config as ``tricklab train`` does; return a :class:`~tricklab.train.run.RunResult`
    (``history``, ``metrics``, ``run_dir``, ``model``).

    ``config``: a ``Config``, a mapping (``{"model": {"name": "cnn"}}`` or dotted keys), a YAML path or None.
    ``write=False`` keeps everything in memory (no run directory). ``progress``: one line per epoch. A run
    that stops on NaN/Inf or blows up raises (:class:`~tricklab.train.loop.NonFiniteError`, ``DivergedError``
    with the result attached), as ``tricklab train`` exits 3.

    Example::

        result = tricklab.run({"data.name": "mnist1d", "train.epochs": 2}, write=False)
        print(result.metrics["test_acc"], result.history[-1]["val_acc"])
    """
    from tricklab.train.run import run as run_config

    if out is not None and not isinstance(out, str | os.PathLike):
        raise wrong_type("out", out, "a run directory's path (str or os.PathLike) or None")
    cfg = as_config(config, overrides)
    cbs = list(callbacks)
    if progress:
        from tricklab.cli.progress import ProgressReporter

        cbs.append(ProgressReporter())
    return run_config(cfg, out, callbacks=cbs, write=write)


def diagnose(
    model,
    data,
    *,
    optimizer=None,
    loss_fn: Callable | None = None,
    steps: int = 200,
    every: int = 10,
    batch_size: int = 128,
    recheck: bool = True,
    seed: int = 0,
):
    """The doctor on any model that maps inputs to logits; returns a
    :class:`~tricklab.diagnostics.doctor.DoctorResult` (``verdicts`` with their layers and figures,
    ``prescription``, ``recheck``, ``save(dir)`` for the HTML report; it renders itself in Jupyter).

    ``data``: ``(x, y)`` tensors or any iterable of ``(x, y)`` batches (a ``DataLoader``). ``optimizer``: one
    over the model's parameters (default Adam, lr 1e-3). The model and optimizer are not changed: the doctor
    trains copies for ``steps`` steps, probing every ``every`` steps.

    Example::

        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 64), torch.nn.Sigmoid(),
                                  torch.nn.Linear(64, 10))
        x, y = torch.randn(256, 1, 40), torch.randint(0, 10, (256,))
        result = tricklab.diagnose(net, (x, y), optimizer=torch.optim.SGD(net.parameters(), lr=0.1), steps=30)
        print([v.name for v in result.verdicts], result.prescription)
    """
    import torch.nn.functional as F

    from tricklab.diagnostics.doctor import diagnose_model

    return diagnose_model(
        model,
        data,
        optimizer=optimizer,
        loss_fn=loss_fn or F.cross_entropy,
        steps=steps,
        every=every,
        batch_size=batch_size,
        recheck=recheck,
        seed=seed,
    )


@dataclass
class LabResult:
    """A lab's outcome: one record per study variant (mean ± 95% CI of test accuracy over seeds, the paired
    difference with its baseline, p, the verdict), the report's path and the run counts. ``to_csv()``; renders
    as the report (tables, verdicts, plots) in Jupyter."""

    out: Path
    report: Path
    records: list[dict[str, Any]]
    done: int
    failed: int
    skipped: int
    wall_time_s: float
    failures: list[tuple[tuple, str]] = field(default_factory=list)
    executor: str = ""
    across: list[dict[str, Any]] = field(default_factory=list)  # :func:`across_records`: studies on several datasets

    def to_csv(self, path: str | Path | None = None, *, force: bool = False) -> str:
        """The records as CSV text; also written to ``path`` when given: a new path, or a table this method
        wrote before (by its header); another existing file only with ``force=True``, never a link, FIFO or
        device (:mod:`tricklab.outputs`)."""
        buf = io.StringIO()
        cols = list(self.records[0]) if self.records else list(RECORD_COLUMNS)
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(self.records)
        if path is not None:
            if not isinstance(path, str | os.PathLike):
                raise wrong_type("path", path, "a file's path (str or os.PathLike) or None")
            write_file(path, buf.getvalue(), LAB_TABLE, force=force, label=f"to_csv({str(path)!r})")
        return buf.getvalue()

    def _repr_html_(self) -> str:
        page = self.report.read_text(encoding="utf-8")
        body = page[page.index("<body>") + len("<body>") : page.rindex("</body>")]
        style = page[page.index("<style>") : page.index("</style>") + len("</style>")]
        return f"<div class='tricklab-lab'>{style.replace('body{', '.tricklab-lab{')}{body}</div>"


#: A lab table that :meth:`LabResult.to_csv` wrote, known by its header's first columns.
LAB_TABLE = Kind("lab table written by tricklab", b"study,dataset,variant,", at_start=True)

RECORD_COLUMNS = (
    "study",
    "dataset",
    "variant",
    "baseline",
    "seeds",
    "failed",
    "diverged",
    "test_acc_mean",
    "test_acc_ci_low",
    "test_acc_ci_high",
    "diff_mean",
    "diff_ci_low",
    "diff_ci_high",
    "p",
    "significant",
    "p_holm",
    "outcome",
    "prob_improvement",
    "prob_improvement_ci_low",
    "prob_improvement_ci_high",
    "test_acc_iqm",
    "seeds_needed",
    "decided_at",
    "decision_ci_low",
    "decision_ci_high",
    "margin_pp",
    "verdict",
)


def lab_records(lab_dir: str | Path) -> list[dict[str, Any]]:
    """One plain record per study variant in ``lab_dir``'s database, computed from its runs.

    ``outcome`` is ``better``, ``worse``, ``equivalent`` or ``undecided`` (``baseline`` for a baseline), decided with
    the Holm-adjusted ``p_holm`` and the study's ``margin_pp``; ``prob_improvement`` is the share of common seeds
    on which the variant beat its baseline (ties count half), with its 95% Wilson interval ``prob_improvement_ci_low``
    /``_high`` (:func:`tricklab.lab.improvement.improvement`); ``test_acc_iqm`` the interquartile mean of the test
    accuracy over seeds; ``seeds_needed`` (undecided only) how many seeds
    would likely decide it (with ``seeds="auto"``: the next look's seeds, or past the cap an estimate).
    ``significant`` is the unadjusted paired t-test's. ``decided_at`` (``seeds="auto"`` only): the seeds at the
    look that decided it; ``decision_ci_low``/``_high``: the interval the outcome rests on (the repeated 95%
    interval of the sequential procedure, else the t interval ``diff_ci_low``/``_high``).
    """
    from tricklab.lab.analysis import TEST_ACC
    from tricklab.lab.improvement import improvement, iqm
    from tricklab.lab.results import results

    records = []
    for r in results(lab_dir).studies:
        s, study, dataset = r.stats, r.study, r.dataset
        for v in s.variants:
            iv, c = v.intervals[TEST_ACC], v.comparison
            records.append(
                dict(
                    zip(
                        RECORD_COLUMNS,
                        (
                            study,
                            dataset,
                            v.name,
                            v.baseline,
                            len(v.seeds),
                            len(v.failed),
                            len(v.diverged),
                            iv.mean,
                            iv.lo,
                            iv.hi,
                            c.diff.mean if c else None,
                            c.diff.lo if c else None,
                            c.diff.hi if c else None,
                            c.p if c else None,
                            c.significant if c else None,
                            v.decision.p_holm if c else None,
                            v.decision.outcome if c else "baseline",
                            c.prob_improvement if c else None,
                            *((pi.lo, pi.hi) if (pi := improvement(c.diffs) if c else None) else (None, None)),
                            iqm(v.values[TEST_ACC].values()),
                            v.decision.seeds_needed if c else None,
                            v.decision.decided_at if c else None,
                            *_decision_interval(v),
                            s.margin_pp,
                            v.verdict,
                        ),
                        strict=True,
                    )
                )
            )
    return records


def across_records(lab_dir: str | Path) -> list[dict[str, Any]]:
    """One plain record per variant of a study run on several datasets (:mod:`tricklab.lab.across`): ``outcomes``
    (dataset → its outcome there), ``normalized`` (the mean over datasets of the share of the baseline's errors
    removed, Δ̄ / (1 − baseline accuracy)) with its stratified-bootstrap interval ``normalized_ci_low``/``_high``,
    ``mean_prob_improvement`` (P(better) averaged over datasets), ``outcome`` (better/worse when the interval
    excludes 0, else undecided) and ``datasets`` (those in the aggregate)."""
    from tricklab.lab.across import across
    from tricklab.lab.results import results

    return [
        {
            "study": a.study,
            "variant": a.variant,
            "baseline": a.baseline,
            "outcomes": {c.dataset: c.outcome for c in a.datasets},
            "normalized": a.normalized,
            "normalized_ci_low": a.lo,
            "normalized_ci_high": a.hi,
            "mean_prob_improvement": a.mean_prob,
            "outcome": a.outcome,
            "datasets": list(a.aggregated),
        }
        for a in across([r.stats for r in results(lab_dir).studies])
    ]


def _decision_interval(v) -> tuple[float | None, float | None]:
    """The interval the outcome was decided on: the repeated 95% interval for ``--seeds auto``, else the t interval."""
    c, d = v.comparison, v.decision
    if c is None or d is None:
        return None, None
    return d.interval if d.sequential and d.interval else (c.diff.lo, c.diff.hi)


def run_lab(
    study,
    *,
    dataset: str | list[str] | None = None,
    seeds: int | str | None = None,
    max_seeds: int | None = None,
    epochs: int | None = None,
    quick: bool = False,
    workers: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    executor: str = "process",
    address: str | None = None,
    max_retries: int | None = None,
    aggregate: str | None = None,
) -> LabResult:
    """Run studies over seeds as ``tricklab lab`` does; return a :class:`LabResult`.

    ``study``: a built-in study's name (``"dropout"``), a list of names, ``"all"``, a custom study's YAML path,
    a mapping with the same keys as that file (``name, dataset, base, baseline, variants, seeds, epochs,
    target_val_acc``) or a :class:`~tricklab.lab.studies.Study`. Plugin models and datasets run in worker
    processes when those can import them, else in this process (said in the progress line). Finished runs in
    ``out`` (default ``labs/<dataset>``) are skipped when run again. ``seeds="auto"`` runs 3 seeds, then adds
    seeds only to comparisons still undecided, up to ``max_seeds`` (default 10), with the group-sequential
    procedure of :mod:`tricklab.lab.sequential` (valid under that optional stopping).

    ``executor="ray"`` runs each (study, variant, seed) as a Ray task (``pip install 'tricklab[ray]'``): on a local
    Ray instance, on the cluster at ``address`` (``"auto"``, ``"ray://head:10001"``), or on the Ray this process
    already initialised; a run whose worker or node is lost is retried up to ``max_retries`` times (default 3), a run
    that raises is recorded failed. Results are written here only, and are the same as with ``executor="process"``.

    ``dataset`` may name several datasets (``"mnist,mnist1d"`` or a list): each study then runs on each, as one
    study instance per dataset, and the report adds the aggregate across them (:mod:`tricklab.lab.across`).
    ``aggregate="iqm"`` summarises each arm by its interquartile mean in the report (outcomes are unchanged).

    Example::

        lab = tricklab.run_lab({"name": "bn", "dataset": "synthetic", "base": {"train": {"epochs": 2}},
                                "variants": {"plain": {}, "bn": {"model.norm": "batch"}}}, seeds=2)
        print(lab.records[1]["verdict"], lab.report)
    """
    from rich.console import Console

    from tricklab.lab.events import LabCounts
    from tricklab.lab.lab import run_lab as run_studies
    from tricklab.lab.progress import LabProgress
    from tricklab.lab.request import PYTHON, lab_folder, lab_options
    from tricklab.lab.studies import STUDIES, Study, custom_study, load_custom_study
    from tricklab.report.lab_report import build_report

    file_seeds = file_epochs = None
    if isinstance(study, Study):
        studies = [study]
    elif isinstance(study, Mapping):
        one, file_seeds, file_epochs = custom_study(_plain_study(study))
        studies = [one]
    elif isinstance(study, Path) or isinstance(study, str) and study.endswith((".yaml", ".yml")):
        one, file_seeds, file_epochs = load_custom_study(str(study))
        studies = [one]
    elif isinstance(study, str):
        studies = [STUDIES.get(n) for n in (STUDIES.names() if study == "all" else [study])]
    elif isinstance(study, (list, tuple)) and study and all(isinstance(n, str) for n in study):
        studies = [STUDIES.get(n) for n in study]
    else:
        raise TrickLabError(
            f"study: got {study!r}; expected a study name, a list of names, a YAML path, a mapping or a Study"
        )
    opts = lab_options(
        PYTHON,
        dataset=dataset,
        seeds=seeds,
        max_seeds=max_seeds,
        epochs=epochs,
        quick=quick,
        workers=workers,
        executor=executor,
        address=address,
        max_retries=max_retries,
        file_seeds=file_seeds,
        file_epochs=file_epochs,
        aggregate=aggregate,
    )
    out = lab_folder(out, dataset, studies)
    console = Console(file=sys.stdout, width=120, force_terminal=False, force_jupyter=False)
    on_progress = LabProgress(console, live=False) if progress else None
    executor: dict[str, str] = {}

    def track(counts: LabCounts) -> None:
        executor["executor"] = counts.executor
        if on_progress:
            on_progress(counts)

    result = run_studies(
        studies, opts, out, command=_python_command(study, opts), on_progress=track, finish=build_report
    )  # the lab folder stays locked until its report is written
    report = result.finished
    return LabResult(
        out,
        report,
        lab_records(out),
        result.done,
        result.failed,
        result.skipped,
        result.wall_time_s,
        result.failures,
        executor.get("executor", ""),
        across_records(out),
    )


def _plain_study(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in d.items()}


def _python_command(study, opts) -> str:
    """The call that reproduces this lab: the study as given (a name, names, a YAML path, or the mapping itself)."""
    from tricklab.lab.studies import STUDIES, Study

    if isinstance(study, Mapping):
        given = repr(_plain_study(study))
    elif isinstance(study, Study):
        given = repr(study.name) if study.name in STUDIES and STUDIES.get(study.name) is study else "<a Study object>"
    else:
        given = repr(str(study) if isinstance(study, Path) else study)
    args = [given, "seeds='auto'", f"max_seeds={opts.max_seeds}"] if opts.max_seeds else [given, f"seeds={opts.seeds}"]
    dataset = ",".join(opts.datasets) if opts.datasets else opts.dataset
    args += [f"{k}={v!r}" for k, v in (("dataset", dataset), ("epochs", opts.epochs)) if v is not None]
    args += [f"aggregate={opts.aggregate!r}"] if opts.aggregate else []
    args += ["quick=True"] if opts.quick else []
    return f"tricklab.run_lab({', '.join(args)})"


# --- plugins ------------------------------------------------------------------------------------------------------


def _register(family: str, name: str, obj: Any, help: str):
    from tricklab.catalog import family as registry

    if not isinstance(name, str) or not name or ":" in name:
        raise TrickLabError(f"plugin name {name!r}: must be a non-empty name without ':'")
    reg = registry(family)

    def add(o: Any) -> Any:
        if not callable(o):
            raise TrickLabError(f"{family[:-1]} {name!r}: got a {type(o).__name__}, not a callable")
        try:
            return reg.register(name, o, help=help, source="registered in Python")
        except ValueError as e:
            raise TrickLabError(f"{e}: tricklab's own names cannot be replaced; choose another name") from None

    return add(obj) if obj is not None else add


def register_model(name: str, factory: Callable | None = None, *, help: str = ""):
    """Make ``factory(input_shape, num_classes, **kwargs) -> nn.Module`` available as ``model.name: <name>``;
    usable as a decorator. Registering a name again replaces your earlier one (a notebook cell run twice).

    Example::

        @tricklab.register_model("small_mlp")
        def small_mlp(input_shape, num_classes, hidden=64, dropout=0.0):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), hidden),
                                       torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, num_classes))

        tricklab.run({"model.name": "small_mlp", "model.dropout": 0.1, "data.name": "mnist1d"}, write=False)
    """
    return _register("models", name, factory, help)


def register_dataset(name: str, loader: Callable | None = None, *, help: str = ""):
    """Make ``loader(**kwargs)`` (``root=``/``path=`` when it takes them) available as ``data.name: <name>``.
    It returns ``(train, test)`` pairs of ``(x, y)``, ``(x_train, y_train, x_test, y_test)``, a mapping of those
    or a :class:`~tricklab.data.RawDataset`; tricklab carves validation and fits scaling as for built-ins."""
    return _register("datasets", name, loader, help)


def register_callback(name: str, factory: Callable | None = None, *, help: str = ""):
    """Make ``factory(**kwargs) -> Callback`` available as ``callbacks: [{name: <name>, kwargs: {...}}]``."""
    return _register("callbacks", name, factory, help)

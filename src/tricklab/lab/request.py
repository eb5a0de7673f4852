"""A lab request checked once, the same way for ``tricklab.run_lab`` and ``tricklab lab``.

Both faces hand their options to :func:`lab_options`, which applies one table of bounds (:data:`BOUNDS`), the same
rules between options (``max_seeds`` only with ``seeds`` auto, ``address`` and ``max_retries`` only with the Ray
executor) and the same dataset check, and returns the :class:`LabOptions` the lab runs with. A :class:`Face` only
says how its messages name the options (``seeds = 0`` in Python, ``--seeds = 0`` on the command line).
:func:`lab_folder` is the one default output folder: ``labs/<dataset>`` with the ``:`` of an import path
(``pkg.mod:loader``) written ``_``, a name every file system takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tricklab.config import MAX_EPOCHS
from tricklab.errors import TrickLabError
from tricklab.lab.ray_executor import DEFAULT_RETRIES, MAX_RETRIES
from tricklab.lab.sequential import CAP, FIRST

EXECUTORS = ("process", "ray")
MAX_SEEDS, MAX_WORKERS = 1000, 1024  # beyond these a lab has no meaning on any machine


@dataclass(frozen=True)
class LabOptions:
    """How a lab runs its studies (checked by :func:`lab_options`; :func:`check_executor` at the lab's start)."""

    dataset: str | None = None  # one dataset for every study; None: each study's own, or ``datasets``
    datasets: tuple[str, ...] = ()  # two or more: every study runs on each, as one study instance per dataset
    seeds: int = 3  # seeds per variant; with ``max_seeds``: the first look's seeds
    max_seeds: int | None = None  # ``--seeds auto``: add seeds to undecided comparisons up to this cap
    epochs: int | None = None
    quick: bool = False
    workers: int | None = None
    cores: int | None = None
    executor: str = "process"  # one of EXECUTORS: worker processes here, or Ray tasks (tricklab.lab.ray_executor)
    address: str | None = None  # --executor ray: an existing cluster's address; None starts a local Ray instance
    max_retries: int = DEFAULT_RETRIES  # --executor ray: retries of a run whose worker process or node was lost
    device: str | None = None  # train.device of every run (not part of a run's identity); None: each study's own
    aggregate: str | None = None  # "iqm": reports summarise each arm by its interquartile mean; None: the mean


@dataclass(frozen=True)
class Bound:
    """The whole numbers an option takes, ``low`` to ``high``; ``why`` explains the lower bound where it is not 1."""

    low: int
    high: int
    why: str = ""


#: Every numeric option of a lab and the values it takes, for both faces.
BOUNDS: dict[str, Bound] = {
    "seeds": Bound(1, MAX_SEEDS),
    "max_seeds": Bound(FIRST, MAX_SEEDS, "the first look's seeds"),
    "epochs": Bound(1, MAX_EPOCHS),
    "workers": Bound(1, MAX_WORKERS),
    "max_retries": Bound(0, MAX_RETRIES),
}


@dataclass(frozen=True)
class Face:
    """How a face names options and shows values in its one-line refusals."""

    names: dict[str, str] = field(default_factory=dict)  # option → its name here (default: the option itself)
    show: Callable[[Any], str] = repr
    auto: str = "seeds='auto'"  # how "seeds auto" is said here
    ray: str = "executor 'ray'"  # how "the Ray executor" is said here
    typed: bool = False  # values arrive as whole numbers already (argparse), so a bound needs no "integer"

    def name(self, option: str) -> str:
        return self.names.get(option, option)

    def out_of_bounds(self, option: str, value: Any) -> TrickLabError:
        b = BOUNDS[option]
        if not self.typed:
            allowed = f"an integer from {b.low} to {b.high}"
        elif b.why and isinstance(value, int) and value < b.low:
            allowed = f"at least {b.low}, {b.why}"
        else:
            allowed = f"{b.low} to {b.high}"
        return TrickLabError(f"{self.name(option)} = {self.show(value)}: must be {allowed}")


PYTHON = Face()
SHELL = Face(
    names={o: "--" + o.replace("_", "-") for o in (*BOUNDS, "address", "dataset", "executor", "aggregate")},
    show=str,
    auto="--seeds auto",
    ray="--executor ray",
    typed=True,
)


def check_bound(option: str, value: Any, face: Face = PYTHON) -> None:
    """Refuse ``value`` of ``option`` outside :data:`BOUNDS` (``None``, not given, passes)."""
    if value is None:
        return
    b = BOUNDS[option]
    if isinstance(value, bool) or not isinstance(value, int) or not b.low <= value <= b.high:
        raise face.out_of_bounds(option, value)


def lab_options(
    face: Face,
    *,
    dataset: str | Sequence[str] | None = None,
    seeds: int | str | None = None,
    max_seeds: int | None = None,
    epochs: int | None = None,
    quick: bool = False,
    workers: int | None = None,
    executor: str = "process",
    address: str | None = None,
    max_retries: int | None = None,
    file_seeds: int | None = None,
    file_epochs: int | None = None,
    device: str | None = None,
    aggregate: str | None = None,
) -> LabOptions:
    """The :class:`LabOptions` of a request, or the one-line refusal of its first bad option.

    ``seeds``: a number, ``"auto"`` (the first look's :data:`~tricklab.lab.sequential.FIRST` seeds, then more up to
    ``max_seeds``, default :data:`~tricklab.lab.sequential.CAP`) or None (``file_seeds``, a custom study's own, else
    3; 2 with ``quick``). ``epochs`` None: ``file_epochs``, else each study's. ``max_retries`` None: the default.
    ``dataset``: one name, names separated by commas (``"mnist,mnist1d"``) or a list of names: with two or more,
    every study runs on each (:func:`dataset_names`). ``aggregate``: ``"mean"`` (the default) or ``"iqm"``.
    """
    auto = seeds == "auto"
    if max_seeds is not None and not auto:
        raise TrickLabError(f"{face.name('max_seeds')} = {face.show(max_seeds)}: only with {face.auto}")
    check_bound("seeds", None if auto else seeds, face)
    if auto:
        max_seeds = CAP if max_seeds is None else max_seeds
        check_bound("max_seeds", max_seeds, face)
    check_bound("epochs", epochs, face)
    check_bound("workers", workers, face)
    if executor not in EXECUTORS:
        raise TrickLabError(f"{face.name('executor')} = {face.show(executor)}: must be one of {', '.join(EXECUTORS)}")
    for option, value in (("address", address), ("max_retries", max_retries)):
        if value is not None and executor != "ray":
            raise TrickLabError(
                f"{face.name(option)} = {face.show(value)}: only with {face.ray} (got {face.name('executor')} "
                f"{face.show(executor)})"
            )
    check_bound("max_retries", max_retries, face)
    from tricklab.lab.studies import check_dataset

    names = dataset_names(dataset, face)
    for name in names:
        check_dataset(name)
    if aggregate is not None:
        from tricklab.lab.improvement import AGGREGATES

        if aggregate not in AGGREGATES:
            raise TrickLabError(
                f"{face.name('aggregate')} = {face.show(aggregate)}: must be one of {', '.join(AGGREGATES)}"
            )
    return LabOptions(
        dataset=names[0] if len(names) == 1 else None,
        datasets=names if len(names) > 1 else (),
        seeds=FIRST if auto else seeds or file_seeds or (2 if quick else 3),
        max_seeds=max_seeds if auto else None,
        epochs=epochs or file_epochs,
        quick=quick,
        workers=workers,
        executor=executor,
        address=address,
        max_retries=DEFAULT_RETRIES if max_retries is None else max_retries,
        device=device,
        aggregate=None if aggregate in (None, "mean") else aggregate,
    )


def dataset_names(dataset: str | Sequence[str] | None, face: Face = PYTHON) -> tuple[str, ...]:
    """The datasets of a request, in order: ``"mnist,mnist1d"`` or ``["mnist", "mnist1d"]`` → both; None → none.
    An empty name or a name given twice is refused in one line (each dataset's runs are kept apart, once)."""
    if dataset is None:
        return ()
    names = [n.strip() for n in dataset.split(",")] if isinstance(dataset, str) else list(dataset)
    shown = face.show(dataset if isinstance(dataset, str) else list(dataset))
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise TrickLabError(
                f"{face.name('dataset')} = {shown}: expected dataset names separated by commas, e.g. mnist,mnist1d"
            )
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise TrickLabError(f"{face.name('dataset')} = {shown}: names {twice!r} twice; name each dataset once")
    return tuple(names)


def study_datasets(study: Any, opts: LabOptions) -> tuple[str, ...]:
    """The datasets a study runs on in this lab: ``--dataset`` (one or several), else the study's ``datasets``,
    else its ``dataset``. Each is its own study instance (its own runs, spec and outcomes)."""
    if opts.datasets:
        return opts.datasets
    if opts.dataset:
        return (opts.dataset,)
    return tuple(getattr(study, "datasets", ()) or ()) or (study.dataset,)


def lab_folder(out: str | Path | None, dataset: str | Sequence[str] | None, studies: Sequence[Any]) -> Path:
    """Where a lab writes: ``out`` when given, else ``labs/<dataset>`` (``--dataset``, else the first study's), with
    the ``:`` of an import path written ``_`` (``pkg.mod:loader`` → ``labs/pkg.mod_loader``); several datasets are
    joined by ``+`` (``labs/mnist+mnist1d``)."""
    if out is not None:
        return Path(out)
    names = dataset_names(dataset) if dataset is not None else ()
    names = names or tuple(getattr(studies[0], "datasets", ()) or ()) or (studies[0].dataset,)
    return Path("labs") / "+".join(names).replace(":", "_")


def check_executor(opts: LabOptions) -> None:
    """Refuse a bad executor, an address without Ray, retries out of bounds, and ``--executor ray`` without Ray
    installed or with an address nothing answers at: the lab's own check of options built by hand."""
    from tricklab.lab.ray_executor import check_address, require_ray

    if opts.executor not in EXECUTORS:
        raise TrickLabError(f"executor = {opts.executor!r}: must be one of {', '.join(EXECUTORS)}")
    if opts.executor != "ray" and opts.address is not None:
        raise TrickLabError(f"address = {opts.address!r}: only with executor 'ray'")
    check_bound("max_retries", opts.max_retries)
    if opts.executor == "ray":
        require_ray()
        check_address(opts.address)

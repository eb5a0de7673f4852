"""What a lab stores of each study beside its runs: the contract between the lab and its reports.

A :class:`StudySpec` is written as one JSON object in ``results.sqlite`` (the ``studies`` table) when a lab starts, and
read back by the reports and the API, so ``tricklab report`` needs no study code. Its JSON keys, their order and their
values are those of every lab folder written so far: :meth:`StudySpec.to_dict` of a spec read from a database gives
back the object it was read from, and a new spec is written as earlier labs wrote theirs.

A spec is also a read-only mapping of its stored keys (``spec["variants"]``), as the analysis reads it: the keys it
checks itself (``margin``, ``sequential``, ``seeds``) keep the value stored, whatever it is, so a damaged database is
refused by the analysis with the key's name rather than here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The stored keys, in the order they are written.
KEYS = (
    "name",
    "doc",
    "dataset",
    "baseline",
    "variants",
    "baselines",
    "overrides",
    "target_val_acc",
    "init_signal",
    "seeds",
    "margin",
    "sequential",
    "outcomes",
)


@dataclass(frozen=True)
class StudySpec(Mapping[str, Any]):
    """One study on one dataset as the lab ran it: its variants and baselines, every variant's overrides (seed shown
    as ``"<seed>"``), the target and margin of its outcomes, its seeds, ``sequential`` (``{"first", "cap"}``)
    for ``--seeds auto``, and the ``outcomes`` it judges (absent: test accuracy alone)."""

    name: str
    doc: str
    dataset: str
    baseline: str
    variants: tuple[str, ...]
    baselines: dict[str, str]
    overrides: dict[str, dict[str, Any]]
    target_val_acc: float | None = None
    init_signal: bool = False
    seeds: Any = None  # an int as written by the lab; checked by tricklab.lab.analysis when read
    margin: Any = None  # pp of practical equivalence, None: the dataset's default; checked by the analysis
    sequential: Any = None  # {"first": n, "cap": m} for --seeds auto; checked by the analysis
    outcomes: Any = None  # the judged outcomes (["test_acc", "steps_to_target"]), None: test accuracy; checked there
    stored: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # the object read, as read

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored: the one read when this spec came from a database, else built in :data:`KEYS`'
        order (``sequential`` and ``outcomes`` only when set, so a study judged on test accuracy alone is written as
        earlier labs wrote it)."""
        if self.stored is not None:
            return dict(self.stored)
        d = {k: getattr(self, k) for k in KEYS if k not in ("sequential", "outcomes")}
        d["variants"] = list(self.variants)
        if self.sequential is not None:
            d["sequential"] = self.sequential
        if self.outcomes is not None:
            d["outcomes"] = list(self.outcomes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudySpec:
        """A spec from its stored object (already checked by :mod:`tricklab.lab.store`: variants, baselines,
        baseline, target, overrides and doc); keys it does not know are kept for :meth:`to_dict`."""
        d = dict(d)
        return cls(
            name=d.get("name", "?"),
            doc=d.get("doc", ""),
            dataset=d.get("dataset", ""),
            baseline=d["baseline"],
            variants=tuple(d["variants"]),
            baselines=dict(d["baselines"]),
            overrides=dict(d.get("overrides", {})),
            target_val_acc=d.get("target_val_acc"),
            init_signal=bool(d.get("init_signal", False)),
            seeds=d.get("seeds"),
            margin=d.get("margin"),
            sequential=d.get("sequential"),
            outcomes=d.get("outcomes"),
            stored=d,
        )

    # the stored object, read as a mapping
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __or__(self, other: Mapping[str, Any]) -> dict[str, Any]:
        """The stored object with ``other``'s keys set (a plain dict, as ``dict | dict`` gives)."""
        return self.to_dict() | dict(other)

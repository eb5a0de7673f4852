"""Turn a study's runs into numbers: per-variant intervals over seeds and paired verdicts against baselines."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tricklab.lab.stats import Interval, Paired, mean_ci, paired, verdict
from tricklab.lab.store import RunRow

# Metric names shared by the analysis and the report layer.
TEST_ACC = "test_acc"
BEST_VAL_ACC = "best_val_acc"
EPOCHS_TO_TARGET = "epochs_to_target"
WALL_TIME = "wall_time_s"


def epochs_to_target(history: list[dict[str, Any]], target: float | None) -> float | None:
    """The first epoch whose validation accuracy reaches ``target`` (None if never reached)."""
    if target is None:
        return None
    for row in history:
        if row.get("val_acc", -1) >= target:
            return float(row["epoch"])
    return None


@dataclass
class VariantStats:
    name: str
    baseline: str
    seeds: list[int]
    failed: list[int]
    values: dict[str, dict[int, float]]  # metric → {seed: value}
    intervals: dict[str, Interval]
    reached_target: int  # runs that reached the target validation accuracy
    diverged: list[int] = field(default_factory=list)  # seeds whose training stopped on NaN/Inf
    comparison: Paired | None = None  # test accuracy vs baseline on common seeds
    verdict: str = ""
    curves: dict[int, list[float]] = field(default_factory=dict)  # seed → val_acc per epoch


@dataclass
class StudyStats:
    study: str
    dataset: str
    baseline: str
    target: float | None
    variants: list[VariantStats]
    pending: int

    def variant(self, name: str) -> VariantStats:
        return next(v for v in self.variants if v.name == name)


def analyse(study: str, dataset: str, spec: dict[str, Any], rows: list[RunRow]) -> StudyStats:
    """Statistics of one study on one dataset from its rows; ``spec`` holds variants, baselines and target."""
    target = spec.get("target_val_acc")
    out: list[VariantStats] = []
    by_variant: dict[str, list[RunRow]] = {}
    for r in rows:
        by_variant.setdefault(r.variant, []).append(r)
    for name in spec["variants"]:
        vrows = by_variant.get(name, [])
        done = [r for r in vrows if r.status == "done" and r.metrics]
        values: dict[str, dict[int, float]] = {TEST_ACC: {}, BEST_VAL_ACC: {}, EPOCHS_TO_TARGET: {}, WALL_TIME: {}}
        curves = {}
        for r in done:
            hist = r.history or []
            values[TEST_ACC][r.seed] = float(r.metrics["test_acc"])
            vals = [h["val_acc"] for h in hist if "val_acc" in h and "member" not in h] or [
                h["val_acc"] for h in hist if "val_acc" in h
            ]
            if vals:
                values[BEST_VAL_ACC][r.seed] = float(r.metrics.get("best_val_acc", max(vals)))
            e = epochs_to_target([h for h in hist if h.get("member", 0) == 0], target)
            if e is not None:
                values[EPOCHS_TO_TARGET][r.seed] = e
            values[WALL_TIME][r.seed] = float(r.metrics.get("wall_time_s", math.nan))
            curves[r.seed] = [h["val_acc"] for h in hist if "val_acc" in h and h.get("member", 0) == 0]
        intervals = {m: mean_ci(list(v.values())) for m, v in values.items()}
        out.append(
            VariantStats(
                name=name,
                baseline=spec["baselines"][name],
                seeds=sorted(values[TEST_ACC]),
                failed=sorted(r.seed for r in vrows if r.status == "failed"),
                values=values,
                intervals=intervals,
                reached_target=len(values[EPOCHS_TO_TARGET]),
                curves=curves,
                diverged=sorted(r.seed for r in done if r.metrics.get("diverged") or r.metrics.get("diverged_members")),
            )
        )
    stats = StudyStats(
        study,
        dataset,
        spec["baseline"],
        target,
        out,
        pending=sum(1 for r in rows if r.status in ("pending", "running")),
    )
    for v in stats.variants:
        if v.name == v.baseline:
            v.verdict = f"{v.name}: baseline"
            continue
        base = stats.variant(v.baseline)
        v.comparison = paired(v.values[TEST_ACC], base.values[TEST_ACC])
        v.verdict = verdict(v.name, v.comparison, baseline=v.baseline)
    return stats

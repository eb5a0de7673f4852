"""What a trick is worth on one seed and across datasets, drawn: the probability-of-improvement cell, the IQM arm
cell, the scoreboard that opens the HTML report, the cross-dataset section and the performance-profile plot.

The numbers come from :mod:`tricklab.lab.improvement` and :mod:`tricklab.lab.across`; this module only formats and
draws them, for :mod:`tricklab.report.lab_report` (terminal, HTML) and :mod:`tricklab.report.markdown`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tricklab.lab.across import AcrossDatasets, across, performance_profile, profile_runs
from tricklab.lab.analysis import TEST_ACC, StudyStats
from tricklab.lab.improvement import CONFIDENCE, IQM, improvement, iqm_interval
from tricklab.report.findings import NOT_RUN_COLOURS, not_run

PROB_COLUMN = "P(better) [95% CI]"
PROFILE_FILE = "across-datasets-profile.png"


def prob_cell(v) -> str:
    """``"0.80 [0.49, 0.94]"``: P(variant beats its baseline on a seed) and its Wilson interval; ``""`` for a
    baseline, ``"—"`` without common seeds."""
    c = v.comparison
    if c is None:
        return ""
    pi = improvement(c.diffs)
    if pi.n == 0:
        return "—"
    return f"{pi.p:.2f} [{pi.lo:.2f}, {pi.hi:.2f}]"


def arm_cell(s: StudyStats, v) -> str | None:
    """The test accuracy cell of a study summarised by IQM: ``"IQM 97.80 [97.51, 98.02]"`` (percentile bootstrap over
    seeds); None when the study uses the mean (the caller keeps its mean ± half-width)."""
    if s.aggregate != IQM:
        return None
    values = list(v.values[TEST_ACC].values())
    if not values:
        return "—"
    centre, lo, hi = iqm_interval(values)
    if not math.isfinite(lo):
        return f"IQM {centre * 100:.2f}"
    return f"IQM {centre * 100:.2f} [{lo * 100:.2f}, {hi * 100:.2f}]"


def _norm(x: float) -> str:
    return f"{x * 100:+.1f}%" if math.isfinite(x) else "—"


def aggregate_cells(a: AcrossDatasets) -> list[str]:
    """The aggregate's cells: normalized improvement [interval], mean P(better), outcome, datasets aggregated."""
    level = "" if a.confidence == CONFIDENCE else f" ({a.confidence:.1%})"
    interval = f" [{_norm(a.lo)}, {_norm(a.hi)}]{level}" if math.isfinite(a.lo) else " (too few seeds for an interval)"
    prob = f"{a.mean_prob:.2f}" if math.isfinite(a.mean_prob) else "—"
    return [_norm(a.normalized) + interval, prob, a.outcome, str(len(a.aggregated))]


AGGREGATE_COLUMNS = ("error removed, mean [CI]", "mean P(better)", "across datasets", "datasets")
ABOUT = (
    "Across datasets: each dataset's mean paired Δ divided by its baseline's error (1 − accuracy), the share of the "
    "baseline's errors the trick removes, averaged over datasets; the interval is a stratified bootstrap (seeds "
    "resampled within each dataset) with a Student-t quantile at the Welch–Satterthwaite degrees of freedom "
    "(benchmarks/calibrate_across.py: its false positive rate on null studies), at 95% or, for a study with m "
    "variants, at 1 − 0.05/m (Bonferroni, shown beside it); better/worse when it excludes 0. "
    "Mean P(better): the probability of improvement averaged over datasets."
)


def scoreboard_html(
    studies: Sequence,
    colours: dict,
    profile: Path | None,
    img: Callable[[Path, str], str],
    badge: str = "",
) -> str:
    """The block that opens the HTML report: one row per trick (study and variant), one column per dataset, each
    cell its outcome there (coloured, with Δ in pp), then the aggregate across datasets where it has one; the
    performance-profile plot below. ``studies``: the lab's study instances' statistics; ``colours``: outcome →
    (text, background, …); ``img`` embeds a plot; ``badge`` (HTML) follows the heading: the preview mark of a
    ``--quick`` lab."""
    datasets = list(dict.fromkeys(s.dataset for s in studies))
    aggregates = {(a.study, a.variant): a for a in across(studies)}
    rows: dict[tuple[str, str], dict[str, object]] = {}
    for s in studies:
        for v in s.variants:
            if v.comparison is not None:
                rows.setdefault((s.study, v.name), {})[s.dataset] = v
    if not rows:
        return ""
    head = ["trick", *datasets] + (list(AGGREGATE_COLUMNS) if aggregates else [])
    h = [f'<h2 id="scoreboard">Scoreboard {badge}</h2><table class="scoreboard"><tr>']
    h.append("".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
    for (study, name), cells in rows.items():
        tr = [f"<td>{html.escape(study)}: {html.escape(name)}</td>"]
        for d in datasets:
            v = cells.get(d)
            if v is None:
                tr.append("<td></td>")
                continue
            outcome = v.decision.outcome if v.decision else ""
            fg, bg = colours.get(outcome, ("#222", "#fff"))[:2]
            if not_run(v):  # no finished run to compare yet: grey, as the findings show it
                outcome, (fg, bg) = not_run(v), NOT_RUN_COLOURS[:2]
            delta = f"{v.comparison.diff.mean * 100:+.2f} pp" if v.comparison.diff.n else "—"
            tr.append(
                f'<td style="color:{fg};background:{bg};font-weight:600;text-align:left">'
                f"{html.escape(outcome)}<br><small>{html.escape(delta)}</small></td>"
            )
        a = aggregates.get((study, name))
        if a is not None:
            cells_ = aggregate_cells(a)
            fg, bg = colours.get(a.outcome, ("#222", "#fff"))[:2]
            tr += [f"<td>{html.escape(c)}</td>" for c in cells_[:2]]
            tr.append(f'<td style="color:{fg};background:{bg};font-weight:600">{html.escape(cells_[2])}</td>')
            tr.append(f"<td>{html.escape(cells_[3])}</td>")
        elif aggregates:
            tr += ["<td></td>"] * len(AGGREGATE_COLUMNS)
        h.append("<tr>" + "".join(tr) + "</tr>")
    h.append("</table>")
    if aggregates:
        h.append(f'<p class="rule">{html.escape(ABOUT)}</p>')
    if profile is not None:
        h.append(img(profile, "performance profile across datasets"))
    return "\n".join(h)


def across_lines(studies: Sequence) -> list[tuple[str, str]]:
    """One terminal line per aggregate across datasets, with its outcome (for its colour)."""
    out = []
    for a in across(studies):
        removed, prob, outcome, n = aggregate_cells(a)
        per = ", ".join(f"{c.dataset} {c.outcome}" for c in a.datasets)
        out.append(
            (
                f"{a.study}: {a.variant} across {n} datasets: {outcome}: {removed} of the baseline's errors removed, "
                f"mean P(better) {prob} ({per})",
                outcome,
            )
        )
    return out


def across_markdown(studies: Sequence, profile: Path | None, md: Callable[[str], str]) -> list[str]:
    """The Markdown section of the aggregates across datasets (none when no study ran on two datasets or more)."""
    items = across(studies)
    if not items:
        return []
    out = ["## Across datasets", "", "| trick | per dataset | " + " | ".join(AGGREGATE_COLUMNS) + " |"]
    out.append("|:--|:--|" + "--:|" * len(AGGREGATE_COLUMNS))
    for a in items:
        per = "; ".join(f"{c.dataset}: {c.outcome} ({_norm(c.normalized)})" for c in a.datasets)
        cells = [f"{a.study}: {a.variant} vs {a.baseline}", per, *aggregate_cells(a)]
        out.append("| " + " | ".join(md(c).replace("|", "\\|") for c in cells) + " |")
    out += ["", ABOUT, ""]
    if profile is not None:
        out += [f"![performance profile across datasets]({profile.parent.name}/{profile.name})", ""]
    return out


def profile_plot(studies: Sequence, plots_dir: Path) -> tuple[Callable[[Path], Path], Path, str] | None:
    """The performance-profile plot to draw (draw function, file, alt text), None without any study on two datasets
    or more."""
    items = across(studies)
    if not items:
        return None
    return (lambda p: plot_profile(items, p), plots_dir / PROFILE_FILE, "performance profile across datasets")


def plot_profile(items: Sequence[AcrossDatasets], path: Path) -> Path:
    """Performance profiles (Dolan & Moré 2002; Agarwal et al. 2021): for each trick, the share of its (dataset,
    seed) runs whose share of the baseline's error removed exceeds τ, against τ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {f"{a.study}: {a.variant}": profile_runs(a) for a in items}
    values = [x for r in runs.values() for x in r if math.isfinite(x)]
    lo, hi = (min(values + [0.0]), max(values + [0.0])) if values else (-1.0, 1.0)
    pad = 0.05 * (hi - lo or 1)
    taus = np.linspace(lo - pad, hi + pad, 201)
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = ("-", "--", ":", "-.")
    for i, (name, r) in enumerate(runs.items()):
        ax.step(
            taus * 100, performance_profile(r, taus), where="post", linestyle=styles[i // 10 % 4], label=plain(name)
        )
    ax.axvline(0, color="#888", linewidth=0.8)
    ax.set_xlabel("τ: share of the baseline's errors removed (%), per dataset and seed")
    ax.set_ylabel("fraction of runs above τ")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Performance profile across datasets (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # as the report's other plots: the same bytes each time
    plt.close(fig)
    return path


def plain(text: str) -> str:
    """``text`` shown as it is by matplotlib (a ``$`` would start mathtext)."""
    return str(text).replace("$", r"\$")

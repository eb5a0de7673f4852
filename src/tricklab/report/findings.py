"""What a lab found, said first: the summary table and the takeaway lines that open every lab report.

The tables further down compare each variant with its baseline; a reader new to the lab wants first which variant
came out best, how far behind the others are, and whether the lesson's claims held. :func:`study_findings` reads
that from a stored study: the variants ranked by mean test accuracy with each one's Δ to the best, the best one's
paired lead over the runner-up (a 95% interval, not corrected for having picked the best after looking), and the
verdict of each of the lesson's claims (:mod:`tricklab.lab.claims`), computed from the stored outcomes.

Also here, for every report face: which variants have no runs yet (:func:`not_run`, shown grey, not as an open
question), whether a study ran as a ``--quick`` preview (:func:`is_preview`), the plot style of each variant
(:func:`variant_style`: ten colours × line styles and markers, so that eleven variants stay apart), and the configs
as the runs used them (:func:`shown_overrides`: the threads the runs actually had).
"""

from __future__ import annotations

import html
import math
import shlex
from dataclasses import dataclass
from typing import Any

from tricklab.lab.analysis import TEST_ACC, StudyStats, VariantStats
from tricklab.lab.claims import CONFIRMED, NOT_RUN, REFUTED, UNSETTLED, ClaimVerdict, claims_for
from tricklab.lab.results import StudyResult
from tricklab.lab.stats import NO_SIGNAL, Paired, paired

PREVIEW = "preview (--quick)"
PREVIEW_NOTE = (
    "ran with --quick: a quarter of the epochs, at most 10,000 training examples and 2 seeds unless --seeds said "
    "otherwise. Its numbers preview what the study measures; they are not its result (rerun without --quick)"
)
BASELINE_NOT_RUN = "baseline not run"
# claim statuses: (HTML text, HTML background, terminal style, symbol)
CLAIM_COLOURS = {
    CONFIRMED: ("#116329", "#dafbe1", "green", "✓"),
    REFUTED: ("#a40e26", "#ffebe9", "red", "✗"),
    UNSETTLED: ("#7d4e00", "#fff8c5", "yellow", "?"),
    NOT_RUN: ("#57606a", "#eaeef2", "dim", "–"),
    NO_SIGNAL: ("#6639ba", "#fbefff", "magenta", "∅"),  # as lab_report.COLOURS: nothing to compare
}
NOT_RUN_COLOURS = (
    "#57606a",
    "#eaeef2",
    "dim",
    "#afb8c1",
)  # as lab_report.COLOURS: HTML text, background, terminal, plot


# ------------------------------------------------------------------------------------------- variants and studies


def not_run(v: VariantStats) -> str | None:
    """``"not run"`` for a variant without a finished run, ``"baseline not run"`` for one whose baseline has none
    (nothing to compare yet), else None."""
    if not v.seeds:
        return NOT_RUN
    if v.comparison is not None and not v.comparison.seeds:
        return BASELINE_NOT_RUN
    return None


def is_preview(command: str) -> bool:
    """Whether the stored command that ran a study was a ``--quick`` preview (``tricklab lab … --quick`` or
    ``tricklab.run_lab(…, quick=True)``, as :func:`tricklab.lab.lab.command_line` and the API record them)."""
    if command.startswith("tricklab.run_lab("):
        return "quick=True" in command
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    return words[:2] == ["tricklab", "lab"] and "--quick" in words[2 : words.index("--") if "--" in words else None]


# ten colours (matplotlib's tab10), then the same ten dashed, dotted, dash-dotted; each with its own marker
TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def variant_style(i: int) -> dict[str, str]:
    """The plot style of the ``i``-th variant of a study (its order in the study, so a variant keeps its look in
    every plot): colour, line style and marker, no two alike for the first 40 variants."""
    return {
        "color": TAB10[i % 10],
        "linestyle": LINESTYLES[i // 10 % len(LINESTYLES)],
        "marker": MARKERS[(i + 3 * (i // 10)) % len(MARKERS)],
    }


def threads_used(rows: list[Any]) -> dict[str, str]:
    """The ``train.threads`` each variant's finished runs were configured with and ran with (``"1"``, ``"1, 2"``
    when sessions differed), from the runs' stored configs."""
    used: dict[str, set[int]] = {}
    for r in rows:
        t = (r.config or {}).get("train", {}).get("threads") if r.status == "done" else None
        if isinstance(t, int) and not isinstance(t, bool):
            used.setdefault(r.variant, set()).add(t)
    return {v: ", ".join(str(t) for t in sorted(ts)) for v, ts in used.items()}


def shown_overrides(overrides: dict[str, dict[str, Any]], rows: list[Any]) -> dict[str, dict[str, Any]]:
    """A study's overrides as its "Exact configs" show them: ``train.threads`` is the count its finished runs used
    (and what the study asked, where that differs), whether the study or the lab chose it."""
    used = threads_used(rows)
    out = {}
    for name, o in overrides.items():
        o = dict(o)
        if name in used:
            asked = o.get("train.threads")
            o["train.threads"] = (
                used[name]
                if asked is None or str(asked) == used[name]
                else (f"{used[name]} (the study asked for {asked})")
            )
        out[name] = o
    return out


# ------------------------------------------------------------------------------------------------------ findings


@dataclass(frozen=True)
class Ranked:
    """A variant in the ranking: its mean test accuracy (a fraction), seeds, and Δ to the best (pp, ≤ 0)."""

    name: str
    mean: float
    seeds: int
    delta_pp: float


@dataclass(frozen=True)
class StudyFindings:
    """What one study found: its ranking, the best variant's lead over the runner-up, the lesson's claims."""

    study: str
    dataset: str
    preview: bool
    ranked: tuple[Ranked, ...]  # variants with runs, best first
    not_run: tuple[str, ...]  # variants without a finished run
    lead: Paired | None  # best − runner-up, paired by seed
    claims: tuple[ClaimVerdict, ...]
    silent: bool = False  # every comparison of the study is "no signal": nothing learned, the ranking says nothing

    @property
    def title(self) -> str:
        return f"{self.study} on {self.dataset}"

    @property
    def best(self) -> Ranked | None:
        return self.ranked[0] if self.ranked else None

    @property
    def runner_up(self) -> Ranked | None:
        return self.ranked[1] if len(self.ranked) > 1 else None

    @property
    def seeds(self) -> str:
        """Seeds per variant: ``"3"`` or ``"3–10"`` (variants with runs)."""
        counts = sorted({r.seeds for r in self.ranked})
        if not counts:
            return "0"
        return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


SILENT = "nothing learned: every comparison is no signal (each arm at chance or diverged), so no variant is best"


def study_findings(result: StudyResult) -> StudyFindings:
    """The findings of one stored study (:class:`~tricklab.lab.results.StudyResult`)."""
    s = result.stats
    return findings_of(s, is_preview(result.command))


def findings_of(s: StudyStats, preview: bool = False) -> StudyFindings:
    """The findings of a study's statistics; ties in mean keep the study's order."""
    had = [v for v in s.variants if v.seeds and math.isfinite(v.intervals[TEST_ACC].mean)]
    had.sort(key=lambda v: -v.intervals[TEST_ACC].mean)
    top = had[0].intervals[TEST_ACC].mean if had else math.nan
    ranked = tuple(
        Ranked(v.name, v.intervals[TEST_ACC].mean, len(v.seeds), (v.intervals[TEST_ACC].mean - top) * 100) for v in had
    )
    lead = paired(had[0].values[TEST_ACC], had[1].values[TEST_ACC]) if len(had) > 1 else None
    return StudyFindings(
        s.study,
        s.dataset,
        preview,
        ranked,
        tuple(v.name for v in s.variants if not v.seeds),
        lead,
        tuple(claims_for(s)),
        silent=bool(compared := [v for v in s.variants if v.decision is not None])
        and all(v.decision.outcome == NO_SIGNAL for v in compared),
    )


def lead_text(f: StudyFindings) -> str:
    """How far ahead the best variant is: ``"ahead of he_normal by +1.20 pp [+0.40, +2.00]"``, or ``"not separated
    from he_normal: +0.20 pp [-0.50, +0.90]"`` (best − runner-up on the seeds both have, 95% interval)."""
    best, second, lead = f.best, f.runner_up, f.lead
    if best is None:
        return "no variant has finished a run yet"
    if second is None or lead is None:
        return f"the only variant with runs so far ({f.seeds} seed{'s' * (f.seeds != '1')})"
    d = lead.diff
    if d.n == 0:
        return f"{second.name} shares no seed with it, so the two are not compared"
    if d.n < 2:
        return f"ahead of {second.name} by {d.mean * 100:+.2f} pp on 1 seed (no interval)"
    interval = f"{d.mean * 100:+.2f} pp [{d.lo * 100:+.2f}, {d.hi * 100:+.2f}] at {d.n} seeds"
    if d.lo > 0:
        return f"ahead of the runner-up, {second.name}, by {interval}"
    return f"not separated from the runner-up, {second.name}: {interval}"


def ranking_text(f: StudyFindings) -> str:
    """``"lsuv 81.30 %, he_uniform −0.23, glorot_normal −1.10, …"``, then ``"; not run: x, y"``."""
    parts = [
        f"{r.name} {r.mean * 100:.2f}%" if i == 0 else f"{r.name} {r.delta_pp:+.2f}" for i, r in enumerate(f.ranked)
    ]
    text = ", ".join(parts) or "—"
    return text + (f"; not run: {', '.join(f.not_run)}" if f.not_run else "")


def takeaway(f: StudyFindings) -> str:
    """The study's finding in one line: the best variant and its lead, then every claim's verdict."""
    best = f.best
    head = f"{f.title}{' [' + PREVIEW + ']' if f.preview else ''}: "
    if best is None:
        head += "no variant has finished a run yet."
    elif f.silent:
        head += f"{SILENT} ({best.name} {best.mean * 100:.2f}% test accuracy at best)."
    else:
        head += f"best is {best.name} ({best.mean * 100:.2f}% test accuracy), {lead_text(f)}."
    return head + "".join(f" {claim_sentence(c)}" for c in f.claims)


def claim_sentence(c: ClaimVerdict) -> str:
    """``"Claim confirmed: Batch norm … (better)."``, with each comparison's outcome when there are several; a claim
    about speed names the outcome it was judged on (``"(steps to target: better)"``)."""
    return f"Claim {c.label}: {c.claim.text} ({claim_detail(c)})."


def claim_detail(c: ClaimVerdict) -> str:
    """Each comparison's outcome (:attr:`ClaimVerdict.detail`), naming the outcome a speed claim was judged on:
    ``"steps to target: better: all 7"``."""
    return c.detail if c.claim.on == TEST_ACC else f"{c.claim.on.replace('_', ' ')}: {c.detail}"


def claims_cell(f: StudyFindings) -> str:
    """``"1 confirmed, 1 refuted, 1 not settled"`` (or ``"—"`` for a study without claims)."""
    counts: dict[str, int] = {}
    for c in f.claims:
        counts[c.status] = counts.get(c.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items()) or "—"


SUMMARY_COLUMNS = (
    "study",
    "best variant (test acc %)",
    "the others, ranked: Δ vs best, pp",
    "lesson's claims",
    "seeds",
)
CLAIMS_COLUMN = SUMMARY_COLUMNS.index("lesson's claims")
SUMMARY_NOTE = (
    'Ranked by mean test accuracy over seeds; Δ vs best in percentage points. "Not separated" means the 95% '
    "interval of the best variant's paired lead over the runner-up includes 0 (that interval is not corrected for "
    "picking the best after looking). A claim of the lesson is confirmed or refuted only by the outcomes of its "
    "comparisons in the tables below (paired tests, Holm-corrected); until they are decided it is not settled."
)


def summary_rows(fs: list[StudyFindings]) -> list[list[str]]:
    """The cells of the findings table, one row per study (:data:`SUMMARY_COLUMNS`)."""
    rows = []
    for f in fs:
        best = f.best
        rows.append(
            [
                f.title + (f" — {PREVIEW}" if f.preview else ""),
                "none: nothing learned" if f.silent else f"{best.name} ({best.mean * 100:.2f})" if best else "—",
                ", ".join(f"{r.name} {r.delta_pp:+.2f}" for r in f.ranked[1:])
                + (("; " if len(f.ranked) > 1 else "") + f"not run: {', '.join(f.not_run)}" if f.not_run else ""),
                claims_cell(f),
                f.seeds,
            ]
        )
    return rows


# ------------------------------------------------------------------------------------------------------- HTML


FINDINGS_CSS = (
    "".join(
        f".claim-{s.replace(' ', '-')}{{color:{fg};background:{bg};padding:0 .3em;font-weight:600}}\n"
        for s, (fg, bg, _, _) in CLAIM_COLOURS.items()
    )
    + f"td.not-run{{color:{NOT_RUN_COLOURS[0]};background:{NOT_RUN_COLOURS[1]};text-align:left}} "
    f"li.not-run{{color:{NOT_RUN_COLOURS[0]}}}\n"
    ".preview{color:#7d4e00;background:#fff8c5;padding:0 .3em;font-size:.8em;font-weight:600}\n"
    ".takeaway{font-size:1.05em} .findings td:nth-child(3){text-align:left;min-width:22em}\n"
    ".findings td:nth-child(2),.findings td:nth-child(4){text-align:left}\n"
)


def preview_badge() -> str:
    return f'<span class="preview">{html.escape(PREVIEW)}</span>'


def _claim_html(c: ClaimVerdict) -> str:
    cls = "claim-" + c.status.replace(" ", "-")
    return (
        f'<span class="{cls}">{CLAIM_COLOURS[c.status][3]} {html.escape(c.label)}</span>: '
        f"{html.escape(c.claim.text)} <small>({html.escape(claim_detail(c))})</small>"
    )


def takeaway_html(f: StudyFindings, start: bool = False) -> str:
    """The takeaway line as HTML: the best variant and its lead, each claim's verdict coloured; ``start``: it
    starts a paragraph (a capital first letter) rather than following the study's name."""
    best = f.best
    if best is None:
        head = "no variant has finished a run yet."
    elif f.silent:
        head = f"{html.escape(SILENT)} ({html.escape(best.name)} {best.mean * 100:.2f}% test accuracy at best)."
    else:
        head = (
            f"best is <b>{html.escape(best.name)}</b> ({best.mean * 100:.2f}% test accuracy), "
            f"{html.escape(lead_text(f))}."
        )
    head = head[0].upper() + head[1:] if start else head
    claims = "".join(f"<br>{_claim_html(c)}." for c in f.claims)
    badge = f" {preview_badge()}" if f.preview else ""
    return f"{head}{badge}{claims}"


def findings_html(fs: list[StudyFindings]) -> str:
    """The "Findings" section that opens the HTML report: a preview warning if any study was one, the table,
    then one takeaway per study (linked to its section)."""
    if not fs:
        return ""
    h = ['<h2 id="findings">Findings</h2>']
    previews = [f.title for f in fs if f.preview]
    if previews:
        h.append(f"<p>{preview_badge()} {html.escape(', '.join(previews))} {html.escape(PREVIEW_NOTE)}.</p>")
    h.append('<table class="findings"><tr>' + "".join(f"<th>{html.escape(c)}</th>" for c in SUMMARY_COLUMNS) + "</tr>")
    for f, row in zip(fs, summary_rows(fs), strict=True):
        cells = [f"<td>{html.escape(c)}</td>" for c in row]
        cells[0] = f'<td><a href="#{html.escape(f.study)}-{html.escape(f.dataset)}">{html.escape(f.title)}</a>' + (
            f" {preview_badge()}</td>" if f.preview else "</td>"
        )
        cells[CLAIMS_COLUMN] = (
            "<td>"
            + (
                ", ".join(
                    f'<span class="claim-{s.replace(" ", "-")}">{html.escape(part)}</span>'
                    for part, s in _count_parts(f)
                )
                or "—"
            )
            + "</td>"
        )
        h.append("<tr>" + "".join(cells) + "</tr>")
    h.append("</table>")
    h.append(f'<p class="rule">{html.escape(SUMMARY_NOTE)}</p>')
    h.append(
        '<ul class="takeaways">'
        + "".join(
            f'<li class="takeaway"><a href="#{html.escape(f.study)}-{html.escape(f.dataset)}"><b>'
            f"{html.escape(f.title)}</b></a>: {takeaway_html(f)}</li>"
            for f in fs
        )
        + "</ul>"
    )
    return "\n".join(h)


def _count_parts(f: StudyFindings) -> list[tuple[str, str]]:
    counts: dict[str, int] = {}
    for c in f.claims:
        counts[c.status] = counts.get(c.status, 0) + 1
    return [(f"{CLAIM_COLOURS[s][3]} {n} {s}", s) for s, n in counts.items()]

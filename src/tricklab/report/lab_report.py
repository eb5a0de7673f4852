"""Draw a lab: terminal table, PNG plots and a self-contained HTML report, all from the results database.

Every comparison's outcome (better, worse, equivalent, undecided; :mod:`tricklab.lab.stats`) is shown in its own
colour in the table, the verdicts and the bar plot, and each study says that Holm's correction was applied and
which margin of practical equivalence was used. Only this layer imports matplotlib. ``build_report(lab_dir)``
re-renders everything from ``results.sqlite`` alone, so ``tricklab report DIR`` works without re-running anything.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from tricklab.errors import TrickLabError  # noqa: E402
from tricklab.lab.analysis import BEST_VAL_ACC, EPOCHS_TO_TARGET, TEST_ACC, WALL_TIME, StudyStats  # noqa: E402
from tricklab.lab.results import DB_NAME, LabResults, results  # noqa: E402
from tricklab.lab.spec import StudySpec  # noqa: E402
from tricklab.lab.speed import SPEED_MARGIN, CensoredPaired, Timed  # noqa: E402
from tricklab.lab.stats import BETTER, EQUIVALENT, NO_SIGNAL, OUTCOMES, UNDECIDED, WORSE, Interval, fmt_p  # noqa: E402
from tricklab.outputs import HTML_REPORT, PNG, check_target, draw_file, write_file  # noqa: E402
from tricklab.report.findings import (  # noqa: E402
    FINDINGS_CSS,
    NOT_RUN_COLOURS,
    PREVIEW,
    findings_html,
    is_preview,
    not_run,
    preview_badge,
    shown_overrides,
    study_findings,
    takeaway,
    takeaway_html,
    variant_style,
)

# one colour per outcome: (HTML text, HTML background, terminal style, plot)
COLOURS = {
    BETTER: ("#116329", "#dafbe1", "bold green", "#2da44e"),
    WORSE: ("#a40e26", "#ffebe9", "bold red", "#cf222e"),
    EQUIVALENT: ("#0550ae", "#ddf4ff", "bold blue", "#0969da"),
    UNDECIDED: ("#7d4e00", "#fff8c5", "yellow", "#d4a72c"),
    NO_SIGNAL: ("#6639ba", "#fbefff", "magenta", "#8250df"),  # neither arm learned: nothing to compare
}
BASELINE, BASELINE_COLOUR = "baseline", "#888"


def _pct(iv: Interval) -> str:
    if iv.n == 0:
        return "—"
    if iv.n < 2:
        return f"{iv.mean * 100:.2f}"
    return f"{iv.mean * 100:.2f} ± {iv.half_width * 100:.2f}"


def _num(iv: Interval, fmt: str = ".1f") -> str:
    if iv.n == 0:
        return "—"
    return f"{iv.mean:{fmt}}" if iv.n < 2 else f"{iv.mean:{fmt}} ± {iv.half_width:{fmt}}"


def _diff(v) -> str:
    c, dec = v.comparison, v.decision
    if c is None:
        return "baseline"
    if dec is not None and dec.sequential and dec.interval and dec.look_mean is not None:
        lo, hi = dec.interval
        return f"{dec.look_mean * 100:+.2f} [{lo * 100:+.2f}, {hi * 100:+.2f}] at {dec.look_seeds}"
    d = c.diff
    if d.n < 2:
        return f"{d.mean * 100:+.2f} (1 seed)" if d.n else "—"
    return f"{d.mean * 100:+.2f} [{d.lo * 100:+.2f}, {d.hi * 100:+.2f}]"


def _p(v) -> str:
    """The paired t-test's p-value, and Holm's adjustment in parentheses when the study has several comparisons."""
    c, dec = v.comparison, v.decision
    if c is not None and dec is not None and dec.sequential:  # --seeds auto: the repeated p-value and its Holm
        if dec.repeated_p is None or not math.isfinite(dec.repeated_p):
            return "—"
        return _short_p(dec.repeated_p) + (f" ({_short_p(dec.p_holm)})" if dec.family > 1 else "")
    if c is None or dec is None or not math.isfinite(c.p):
        return "" if c is None else "—"
    return _short_p(c.p) + (f" ({_short_p(dec.p_holm)})" if dec.family > 1 else "")


def _short_p(p: float) -> str:
    return fmt_p(p).removeprefix("p = ").removeprefix("p ")  # "0.003", "< 0.001"


def outcome_label(v) -> str:
    """The outcome cell: ``better``, ``worse``, ``equivalent``, ``undecided (≈14 seeds)``, ``baseline``, or ``not
    run`` / ``baseline not run`` while there is nothing to compare (:func:`tricklab.report.findings.not_run`)."""
    missing = not_run(v)
    if missing:
        return missing
    dec = v.decision
    if dec is None:
        return "baseline"
    if dec.outcome == UNDECIDED and dec.seeds_needed:
        return f"undecided (≈{dec.seeds_needed} seeds)"
    return dec.outcome


def _better_on(v) -> str:
    c = v.comparison
    if c is None or not c.diffs:
        return ""
    return f"{c.wins}/{len(c.diffs)}" + (f" ({c.ties} tied)" if c.ties else "")


COLUMNS = (
    "variant",
    "seeds",
    "test acc %",
    "Δ vs baseline, pp [95% CI]",
    "p (Holm)",
    "outcome",
    "better on",
    "best val acc %",
    "epochs to target",
    "time s",
)
OUTCOME_COLUMN = COLUMNS.index("outcome")
NO_WRAP = ("variant", "seeds", "Δ vs baseline, pp [95% CI]", "outcome")


def rule(s: StudyStats) -> str:
    """How the study's outcomes were decided, in one sentence (the report and the table caption say it)."""
    seq = next((v.decision for v in s.variants if v.decision and v.decision.sequential), None)
    if seq is not None:
        return (
            f"Outcomes (--seeds auto, group-sequential): seeds were added only to undecided comparisons, at 3, 5, "
            f"7, … seeds up to {seq.cap}; each look spends part of α (α·t²), better/worse when the repeated "
            f"p-value is significant after Holm's correction over the study's {s.comparisons} "
            f"comparison{'s' if s.comparisons != 1 else ''} (family-wise α = {s.alpha:g}); equivalent when the "
            f"repeated 95% interval lies inside ±{s.margin_pp:g} pp, the margin of practical equivalence for this "
            "study; intervals in the Δ column are these repeated intervals, at the look that decided."
        )
    return (
        f"Outcomes: better/worse when the paired t-test is significant after Holm's correction over the study's "
        f"{s.comparisons} comparison{'s' if s.comparisons != 1 else ''} with a t-test (family-wise α = {s.alpha:g}); "
        f"equivalent when the whole 95% CI of the difference lies inside ±{s.margin_pp:g} pp, the margin of "
        "practical equivalence for this study; otherwise undecided, with about how many seeds would decide it."
    )


def table_rows(s: StudyStats) -> list[list[str]]:
    rows = []
    for v in s.variants:
        seeds = f"{len(v.seeds)}" + (f" ({len(v.diverged)} diverged)" if v.diverged else "")
        seeds += f" ({len(v.failed)} failed)" if v.failed else ""
        reached = v.intervals[EPOCHS_TO_TARGET]
        ett = _num(reached) + (f" ({v.reached_target}/{len(v.seeds)})" if len(v.seeds) else "")
        rows.append(
            [
                v.name,
                seeds,
                _pct(v.intervals[TEST_ACC]),
                _diff(v),
                _p(v),
                outcome_label(v),
                _better_on(v),
                _pct(v.intervals[BEST_VAL_ACC]),
                ett,
                _num(v.intervals[WALL_TIME]),
            ]
        )
    return rows


def rich_table(s: StudyStats, preview: bool = False) -> Table:
    target = f", target val acc {s.target:.0%}" if s.target else ""
    note = f" — {PREVIEW}" if preview else ""
    t = Table(title=Text(f"{s.study} on {s.dataset}{target}{note}"), title_justify="left")
    for c in COLUMNS:
        t.add_column(c, justify="left" if c == "variant" else "right", no_wrap=c in NO_WRAP)
    t.caption = "mean ± half-width of the 95% Student-t interval over seeds. " + rule(s)
    for v, r in zip(s.variants, table_rows(s), strict=True):
        cells: list[Text] = [Text(c) for c in r]  # names from the database are text, never rich markup
        if not_run(v):
            cells[OUTCOME_COLUMN] = Text(r[OUTCOME_COLUMN], style=NOT_RUN_COLOURS[2])
        elif v.decision is not None:
            cells[OUTCOME_COLUMN] = Text(r[OUTCOME_COLUMN], style=COLOURS[v.decision.outcome][2])
        t.add_row(*cells)
    return t


def plot_curves(s: StudyStats, path: Path, note: str = "") -> Path:
    """Validation accuracy per epoch: mean over seeds with a band from the lowest to the highest seed; each variant
    in its own colour, line style and marker (:func:`~tricklab.report.findings.variant_style`). ``note`` is added
    to the title (a preview says so)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, v in enumerate(s.variants):
        curves = [c for c in v.curves.values() if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        arr = np.array([c[:n] for c in curves]) * 100
        x = np.arange(1, n + 1)
        style = variant_style(i)
        (line,) = ax.plot(x, arr.mean(0), label=_plain(v.name), markevery=max(1, n // 8), **style)
        if len(curves) > 1:
            ax.fill_between(x, arr.min(0), arr.max(0), alpha=0.2, color=line.get_color())
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(_plain(f"{s.study} on {s.dataset}: validation accuracy (band: min–max over seeds){_line(note)}"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def plot_bars(s: StudyStats, path: Path, note: str = "") -> Path:
    """Final test accuracy per variant: mean with its 95% confidence interval, dots for single seeds; bars coloured
    by outcome, grey for variants not run yet. ``note`` is added to the title."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(s.variants) + 1.5))
    names = [_plain(v.name) for v in s.variants]
    means = [v.intervals[TEST_ACC].mean * 100 for v in s.variants]
    errs = [v.intervals[TEST_ACC].half_width * 100 if v.intervals[TEST_ACC].n > 1 else 0 for v in s.variants]
    y = np.arange(len(names))
    colors = [
        NOT_RUN_COLOURS[3] if not_run(v) else COLOURS[v.decision.outcome][3] if v.decision else BASELINE_COLOUR
        for v in s.variants
    ]
    ax.barh(y, [m if math.isfinite(m) else 0 for m in means], xerr=errs, color=colors, capsize=3, alpha=0.8)
    for i, v in enumerate(s.variants):
        vals = [x * 100 for x in v.values[TEST_ACC].values()]
        ax.scatter(vals, [i] * len(vals), color="k", s=8, zorder=3)
    finite = [m for m in means if math.isfinite(m)]
    if finite:
        lo = min(min(finite) - max(errs + [0]) - 1, 100)
        ax.set_xlim(max(0, lo), min(100, max(finite) + max(errs + [0]) + 0.5))
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy (%): mean, 95% CI, one dot per seed")
    ax.set_title(
        _plain(f"{s.study} on {s.dataset}: test accuracy, coloured by outcome vs baseline{_line(note)}"), fontsize=9
    )
    shown = [BASELINE] + [
        o for o in OUTCOMES if any(v.decision and v.decision.outcome == o and not not_run(v) for v in s.variants)
    ]
    shown += ["not run"] if any(not_run(v) for v in s.variants) else []
    labels = {EQUIVALENT: f"equivalent (±{s.margin_pp:g} pp)", BASELINE: "baseline"}
    colours = {o: c[3] for o, c in COLOURS.items()} | {BASELINE: BASELINE_COLOUR, "not run": NOT_RUN_COLOURS[3]}
    ax.legend(
        handles=[Patch(color=colours[o], alpha=0.8, label=labels.get(o, o)) for o in shown],
        fontsize=7,
        loc="best",
    )
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_signal(
    study: str, dataset: str, signals: dict[str, dict], path: Path, variants: tuple[str, ...] = (), note: str = ""
) -> Path:
    """Per-layer activation std at initialization, one line per variant (log scale), each variant in the style it
    has in the study's other plots (its place in ``variants``, the study's variant order; default: ``signals``')."""
    fig, ax = plt.subplots(figsize=(7, 4))
    order = {name: i for i, name in enumerate(variants or signals)}
    for name, sig in signals.items():
        std = [max(float(s), 1e-30) for s in sig["forward_std"]]
        style = variant_style(order.get(name, len(order)))
        ax.plot(range(1, len(std) + 1), std, label=_plain(name), markersize=4, **style)
    ax.set_yscale("log")
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel("std of each layer's output at init")
    ax.set_title(_plain(f"{study} on {dataset}: signal at initialization (one data batch){_line(note)}"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _line(note: str) -> str:
    """A plot title's note (a preview says so) on a line of its own."""
    return f"\n{note}" if note else ""


def _plain(text: str) -> str:
    """``text`` shown as it is by matplotlib: a ``$`` would start mathtext (and a bad formula raises)."""
    return str(text).replace("$", r"\$")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def css_class(outcome: str) -> str:
    """An outcome as an HTML class name (``"no signal"`` → ``"no-signal"``: a class holds no space)."""
    return outcome.replace(" ", "-")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45} h1{font-size:1.6em} h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em} th,td{border:1px solid #ddd;padding:.3em .6em;
text-align:right} th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
tr.base td{background:#fafafa;color:#555} .verdicts li{margin:.2em 0} .rule{color:#444;font-size:.9em}
img{max-width:100%;margin:.5em 0} pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
.doc{color:#444} .note{color:#a60}
"""
CSS += FINDINGS_CSS
CSS += "".join(
    f"td.{css_class(o)}{{color:{fg};background:{bg};font-weight:600;text-align:left}} li.{css_class(o)}{{color:{fg}}}\n"
    for o, (fg, bg, _, _) in COLOURS.items()
)


def _verdict_class(v) -> str:
    return "not-run" if not_run(v) else css_class(v.decision.outcome) if v.decision else ""


def study_html(
    s: StudyStats,
    spec: StudySpec,
    command: str,
    plots: list[tuple[Path, str]],
    *,
    finding=None,
    rows: list | None = None,
) -> str:
    """One study's section; ``finding`` (:class:`~tricklab.report.findings.StudyFindings`) opens it with its
    takeaway and marks a preview; ``rows`` (the study's runs) give the threads its runs used in "Exact configs"."""
    preview = finding is not None and finding.preview
    h = [
        f'<h2 id="{html.escape(s.study)}-{html.escape(s.dataset)}">{html.escape(s.study)} on '
        f"{html.escape(s.dataset)}{' ' + preview_badge() if preview else ''}</h2>"
    ]
    if finding is not None:
        h.append(f'<p class="takeaway">{takeaway_html(finding, start=True)}</p>')
    h.append(f'<p class="doc">{html.escape(spec.get("doc", "")).replace(chr(10), "<br>")}</p>')
    if s.pending:
        h.append(f'<p class="note">{s.pending} run(s) not finished yet: rerun the command to complete them.</p>')
    h.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + "</tr>")
    for v, row in zip(s.variants, table_rows(s), strict=True):
        cls = ' class="base"' if v.comparison is None else ""
        cells = [
            f'<td class="{_verdict_class(v)}">{html.escape(c)}</td>'
            if i == OUTCOME_COLUMN and _verdict_class(v)
            else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(row)
        ]
        h.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    h.append("</table>")
    h.append(f'<p class="rule">{html.escape(rule(s))}</p>')
    h.append(
        '<ul class="verdicts">'
        + "".join(
            f'<li class="{_verdict_class(v)}">{html.escape(f"{v.name}: {not_run(v)} yet" if not_run(v) else v.verdict)}'
            "</li>"
            for v in s.variants
            if v.comparison
        )
        + "</ul>"
    )
    h += speed_html(s)
    for path, alt in plots:
        h.append(_img(path, alt))
    h.append("<details><summary>Exact configs (overrides of the defaults; seed = 0 … seeds − 1)</summary><pre>")
    for name, o in shown_overrides(spec.get("overrides", {}), rows or []).items():
        h.append(html.escape(f"{name}:\n" + "".join(f"  {k}: {val}\n" for k, val in o.items())))
    h.append("</pre></details>")
    h.append(f"<p>Reproduce: <code>{html.escape(command)}</code></p>")
    return "\n".join(h)


def _legend() -> str:
    spans = [
        f'<span style="color:{COLOURS[o][0]};background:{COLOURS[o][1]};padding:0 .3em">{o}</span>' for o in OUTCOMES
    ]
    return ", ".join(spans[:-1]) + " or " + spans[-1]


def db_files(lab_dir: Path) -> list[Path]:
    """The lab's database and the journals SQLite keeps beside it: inputs no output may replace."""
    db = lab_dir / DB_NAME
    return [db, *(db.with_name(DB_NAME + s) for s in ("-wal", "-shm", "-journal"))]


def check_not_emptied(found: LabResults, lab_dir: Path, page: Path) -> None:
    """Refuse to replace an existing report with an empty one: a database without a single study beside a
    report that exists is far more likely emptied by accident than a lab that never ran a study."""
    if not found.studies and os.path.lexists(page):
        raise TrickLabError(
            f"{lab_dir / DB_NAME}: holds no study (its studies table is empty), so {page} is kept; "
            "delete that file to render an empty report"
        )


def plot_stem(study: str, dataset: str) -> str:
    """The plots' file-name stem for a study: only letters, digits, '.', '_' and '-' (a name from the database
    can never make a path leave the plots folder)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{study}-{dataset}")


def build_report(lab_dir: str | Path, console=None, *, out_dir: str | Path | None = None, force: bool = False) -> Path:
    """Analyse every study in ``lab_dir``'s database, draw the plots and write ``report.html``; return its path.

    ``out_dir`` (default: ``lab_dir``) receives ``report.html`` and ``plots/``, so a read-only lab can be rendered
    elsewhere. The database is read and checked in full first; then every file to write is checked
    (:mod:`tricklab.outputs`: a new path, or tricklab's own report or a PNG; ``force`` replaces another regular
    file; never a link, device, folder or the database), so a refusal leaves every existing file as it was.
    """
    lab_dir = Path(lab_dir)
    out_dir = Path(out_dir) if out_dir is not None else lab_dir
    found = results(lab_dir)
    out = out_dir / "report.html"
    inputs = db_files(lab_dir)
    check_target(out, HTML_REPORT, force=force, inputs=inputs)
    check_not_emptied(found, lab_dir, out)
    plots_dir = out_dir / "plots"
    planned = []
    findings = [study_findings(r) for r in found.studies]
    for r in found.studies:
        s, spec, command, signals = r.stats, r.spec, r.command, r.signals
        stem = plot_stem(s.study, s.dataset)
        note = f"{PREVIEW}: not the study's result" if is_preview(command) else ""
        draws = [
            (
                lambda p, s=s, n=note: plot_curves(s, p, n),
                plots_dir / f"{stem}-curves.png",
                f"{s.study} validation curves",
            ),
            (lambda p, s=s, n=note: plot_bars(s, p, n), plots_dir / f"{stem}-test-acc.png", f"{s.study} test accuracy"),
        ]
        if signals:
            draws.append(
                (
                    lambda p, s=s, sig=signals, n=note: plot_signal(
                        s.study, s.dataset, sig, p, variants=tuple(v.name for v in s.variants), note=n
                    ),
                    plots_dir / f"{stem}-signal.png",
                    f"{s.study} signal at init",
                )
            )
        for _, path, _ in draws:
            check_target(path, PNG, force=force, inputs=inputs)
        planned.append((s, spec, command, draws, r.rows))
    sections = []
    for (s, spec, command, draws, rows), finding in zip(planned, findings, strict=True):
        plots = [(draw_file(path, draw, PNG, force=force, inputs=inputs), alt) for draw, path, alt in draws]
        sections.append(study_html(s, spec, command, plots, finding=finding, rows=rows))
    toc = "".join(
        f'<li><a href="#{html.escape(s.study)}-{html.escape(s.dataset)}">{html.escape(s.study)} on '
        f"{html.escape(s.dataset)}</a></li>"
        for s in (r.stats for r in found.studies)
    )
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>tricklab lab report</title><style>{CSS}</style>"
        f"</head><body><h1>tricklab lab report</h1><p>Each variant was trained over several seeds; intervals are "
        f"Student-t 95% confidence intervals over seeds; differences are paired with the baseline on the same "
        f"seeds (paired t-test, p-values Holm-adjusted within each study). Each comparison ends "
        f"{_legend()}. Every number here is computed from the runs in <code>{DB_NAME}</code>.</p>"
        f"{findings_html(findings)}<ul>{toc}</ul>{''.join(sections)}</body></html>"
    )
    write_file(out, page, HTML_REPORT, force=force, inputs=inputs)
    if console is not None:
        for r in found.studies:
            s = r.stats
            console.print(rich_table(s, preview=is_preview(r.command)))
            for v in s.variants:
                if not_run(v) and v.decision:
                    console.print(Text(f"  {v.name}: {not_run(v)} yet", style=NOT_RUN_COLOURS[2]))
                elif v.decision:
                    console.print(Text("  " + v.verdict, style=COLOURS[v.decision.outcome][2]))
                for key, d in v.speed_decisions.items():
                    console.print(Text("  " + v.speed_verdicts[key], style=COLOURS[d.outcome][2]))
        for f in findings:
            console.print(Text("Finding: " + takeaway(f)))
    return out


# ---- time to target (tricklab.lab.speed): a table of its own per judged outcome ------------------------------

SPEED_COLUMNS = ("variant", "vs", "reached target", "median to target", "ratio (median)", "p (Holm)", "outcome")
SPEED_OUTCOME_COLUMN = SPEED_COLUMNS.index("outcome")


def median_time(times: tuple[Timed, ...]) -> str:
    """Median time to target over seeds, a censored run counting as slower than every reached one: ``"1,200"``,
    or ``"> 2,400"`` when half the runs or more never reached it (the median is then only bounded)."""
    if not times:
        return "—"
    ordered = sorted(times, key=lambda t: (not t.reached, t.value))
    mid = ordered[(len(ordered) - 1) // 2]
    return f"{mid.value:,.0f}" if mid.reached else f"> {max(t.value for t in times):,.0f}"


def speed_rows(s: StudyStats, key: str) -> list[tuple[str, list[str]]]:
    """``(outcome, cells)`` per comparison judged on ``key`` (steps_to_target or seconds_to_target)."""
    rows = []
    for v in s.variants:
        c: CensoredPaired | None = v.speed.get(key)
        d = v.speed_decisions.get(key)
        if c is None or d is None:
            continue
        p = "—" if not math.isfinite(c.p) else _short_p(d.repeated_p if d.sequential and d.repeated_p else c.p)
        if d.family > 1 and math.isfinite(d.p_holm):
            p += f" ({_short_p(d.p_holm)})"
        n = len(c.seeds)
        rows.append(
            (
                d.outcome,
                [
                    v.name,
                    v.baseline,
                    f"{sum(t.reached for t in c.variant)}/{n} vs {sum(t.reached for t in c.baseline)}/{n}",
                    f"{median_time(c.variant)} vs {median_time(c.baseline)}",
                    f"{c.ratio:.2f}×" if math.isfinite(c.ratio) else "—",
                    p,
                    d.outcome,
                ],
            )
        )
    return rows


def speed_rule(s: StudyStats, key: str) -> str:
    """How the time-to-target outcomes were decided, in one sentence."""
    unit = key.removesuffix("_to_target")
    return (
        f"Time to target: {unit} until the validation accuracy first reaches {s.target:.0%} (resolved to epochs: "
        f"{unit} at the end of that epoch); a run that never reaches it is censored at its budget. Paired by seed, "
        "scored by what is known of each pair's order (both censored: no information), Wilcoxon's signed-rank test "
        f"(exact), Holm over the study's {key} comparisons (α = {s.alpha:g}); equivalent when every seed reached "
        f"the target in both arms and the 95% interval of the time ratio lies within ±{SPEED_MARGIN:.0%}; "
        f"{NO_SIGNAL} when no seed of either arm reached it."
    )


def speed_html(s: StudyStats) -> list[str]:
    """The time-to-target table, rule and verdicts of each speed outcome the study judges (none: [])."""
    h = []
    for key in (o for o in s.outcomes if o != TEST_ACC):
        rows = speed_rows(s, key)
        if not rows:
            continue
        h.append(f"<h3>{html.escape(key.replace('_', ' '))}</h3><table><tr>")
        h[-1] += "".join(f"<th>{html.escape(c)}</th>" for c in SPEED_COLUMNS) + "</tr>"
        for outcome, cells in rows:
            h.append(
                "<tr>"
                + "".join(
                    f'<td class="{css_class(outcome)}">{html.escape(c)}</td>'
                    if i == SPEED_OUTCOME_COLUMN
                    else f"<td>{html.escape(c)}</td>"
                    for i, c in enumerate(cells)
                )
                + "</tr>"
            )
        h.append("</table>")
        h.append(f'<p class="rule">{html.escape(speed_rule(s, key))}</p>')
        h.append(
            '<ul class="verdicts">'
            + "".join(
                f'<li class="{css_class(v.speed_decisions[key].outcome)}">{html.escape(v.speed_verdicts[key])}</li>'
                for v in s.variants
                if key in v.speed_decisions
            )
            + "</ul>"
        )
    return h

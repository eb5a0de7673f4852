"""A lab's findings as one GitHub-flavoured Markdown page, from its results database alone.

``build_markdown("labs/mnist", "docs/results.md")`` writes what the project publishes: how the lab was run (its
commands, the machine, the wall time of its recorded sessions), how outcomes are decided, one summary table of
every comparison, then each study's description, its table (the same cells as the terminal table and the HTML
report: :func:`tricklab.report.lab_report.table_rows`), its verdict sentences, its plots (PNG files in
``docs/results-plots/``, linked by relative paths) and the command that reruns exactly that study.

Every number comes from ``results.sqlite`` through :func:`tricklab.lab.analysis.analyse`; nothing is written by
hand. The same database gives the same bytes (no generation time; dates are the sessions' own, in UTC), so a
regenerated page changes in git only where the results did.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tricklab import outputs
from tricklab.errors import TrickLabError
from tricklab.lab.analysis import StudyStats
from tricklab.lab.results import results
from tricklab.lab.stats import ALPHA, BETTER, EQUIVALENT, WORSE
from tricklab.outputs import MARKDOWN, PNG
from tricklab.report.findings import (
    CLAIM_COLOURS,
    PREVIEW,
    PREVIEW_NOTE,
    SILENT,
    SUMMARY_COLUMNS,
    SUMMARY_NOTE,
    StudyFindings,
    claim_detail,
    is_preview,
    lead_text,
    not_run,
    shown_overrides,
    study_findings,
    summary_rows,
)
from tricklab.report.lab_report import (
    COLUMNS,
    OUTCOME_COLUMN,
    check_not_emptied,
    db_files,
    plot_bars,
    plot_curves,
    plot_signal,
    plot_stem,
    rule,
    table_rows,
)
from tricklab.report.scoreboard import PROB_COLUMN, across_markdown, prob_cell, profile_plot

DIFF_COLUMN = COLUMNS.index("Δ vs baseline, pp [95% CI]")
P_COLUMN = COLUMNS.index("p (Holm)")
SEEDS_COLUMN = COLUMNS.index("seeds")
LEFT_COLUMNS = ("variant", "outcome")
PLOT_SUFFIXES = ("-curves.png", "-test-acc.png", "-signal.png", "-profile.png")
# `tricklab lab` options that take no value (every other option takes one); tests check this against its parser
LAB_FLAGS = frozenset({"--quick", "-h", "--help"})


def build_markdown(
    lab_dir: str | Path, out_file: str | Path, *, force: bool = False, inputs: Iterable[str | Path] = ()
) -> Path:
    """Write ``out_file`` (Markdown) and its plots in ``<stem>-plots/`` beside it from ``lab_dir``'s database.

    Returns the path written. The database is read and checked in full first, then every file to write is checked
    (:func:`check_target`); the page is replaced atomically, and plots of studies no longer in the database are
    removed from the plots folder. ``inputs``: more files the page must never replace (the command's other outputs).
    """
    lab_dir, out = Path(lab_dir), Path(out_file)
    inputs = [*db_files(lab_dir), *inputs]
    check_target(out, force=force, inputs=inputs)
    found = results(lab_dir)
    check_not_emptied(found, lab_dir, out)
    plots_dir = out.parent / f"{out.stem}-plots"
    findings = [study_findings(r) for r in found.studies]
    planned = [_plots(r.stats, r.signals, plots_dir, f.preview) for r, f in zip(found.studies, findings, strict=True)]
    profile = profile_plot([r.stats for r in found.studies], plots_dir)
    planned.append([profile] if profile is not None else [])
    for plots in planned:
        for _, path, _ in plots:
            outputs.check_target(path, PNG, force=force, inputs=inputs)
    drawn = [
        [(outputs.draw_file(path, draw, PNG, force=force, inputs=inputs), alt) for draw, path, alt in plots]
        for plots in planned
    ]
    _remove_stale(plots_dir, {p.name for plots in drawn for p, _ in plots})
    drawn_profile = drawn.pop()
    text = render(
        found.sessions,
        [(r.stats, r.spec, r.command, plots) for r, plots in zip(found.studies, drawn, strict=True)],
        findings=findings,
        rows=[r.rows for r in found.studies],
        profile=drawn_profile[0][0] if drawn_profile else None,
    )
    return outputs.write_file(out, text, MARKDOWN, force=force, inputs=inputs)


def check_target(out: Path, *, force: bool = False, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse, in one line, a Markdown target that may not take the page (:func:`tricklab.outputs.check_target`):
    a folder, a path under a file, a link, a device, an input, or a file that is not a page tricklab wrote (unless
    ``force``)."""
    if os.path.isdir(out) and not os.path.islink(out):
        raise TrickLabError(f"{out}: is a folder; name the Markdown file to write, e.g. {out / 'results.md'}")
    outputs.check_target(out, MARKDOWN, force=force, inputs=inputs)


def _plots(
    s: StudyStats, signals: dict[str, dict], plots_dir: Path, preview: bool = False
) -> list[tuple[Callable, Path, str]]:
    """The plots of one study: (draw function, file, alt text); a preview's say so in their titles."""
    stem = plot_stem(s.study, s.dataset)
    where = f"{s.study} on {s.dataset}"
    note = f"{PREVIEW}: not the study's result" if preview else ""
    plots = [
        (lambda p: plot_curves(s, p, note), plots_dir / f"{stem}-curves.png", f"{where}: validation accuracy"),
        (lambda p: plot_bars(s, p, note), plots_dir / f"{stem}-test-acc.png", f"{where}: test accuracy"),
    ]
    if signals:
        names = tuple(v.name for v in s.variants)
        draw = lambda p: plot_signal(s.study, s.dataset, signals, p, variants=names, note=note)  # noqa: E731
        plots.append((draw, plots_dir / f"{stem}-signal.png", f"{where}: signal at initialization"))
    return plots


def _remove_stale(plots_dir: Path, keep: set[str]) -> None:
    if plots_dir.is_dir():
        for p in plots_dir.iterdir():
            stale = (p.name.endswith(PLOT_SUFFIXES) and p.name not in keep) or p.name.endswith(".part.png")
            if stale and p.is_file():
                p.unlink()


# ---------------------------------------------------------------------------------------------------------- text


def render(
    sessions: list[dict],
    studies: list[tuple[StudyStats, dict, str, list[tuple[Path, str]]]],
    *,
    findings: list[StudyFindings] | None = None,
    rows: list[list] | None = None,
    profile: Path | None = None,
) -> str:
    """The page: title, how the lab ran, how outcomes are decided, the findings, summary of all comparisons, the
    aggregates across datasets (when a study ran on several), one section per study.

    ``studies``: (stats, spec, stored command, plots as (path, alt text)); plot links are relative to the page
    (the plots folder's name and the file's). ``findings``: each study's
    (:func:`~tricklab.report.findings.study_findings`), which open the page; ``rows``: each study's runs, whose
    threads the "Exact configs" show; ``profile``: the performance-profile plot across datasets.
    """
    datasets = list(dict.fromkeys(s.dataset for s, *_ in studies))
    lines = [f"# tricklab results{': ' + ', '.join(md(d) for d in datasets) if datasets else ''}", ""]
    lines += _header(sessions, [s for s, *_ in studies], [cmd for _, _, cmd, _ in studies])
    if not studies:
        return "\n".join(lines + ["No study is recorded in this lab yet.", ""])
    findings = findings or [None] * len(studies)
    if any(findings):
        lines += _findings([f for f in findings if f is not None])
    lines += ["## Summary", "", *_summary(studies), ""]
    lines += across_markdown([s for s, *_ in studies], profile, md)
    for (s, spec, command, plots), finding, runs in zip(studies, findings, rows or [[]] * len(studies), strict=True):
        lines += _section(s, spec, command, plots, finding=finding, rows=runs)
    return "\n".join(lines).rstrip("\n") + "\n"


def _header(sessions: list[dict], stats: list[StudyStats], study_commands: list[str]) -> list[str]:
    commands = list(dict.fromkeys([x["command"] for x in sessions] + study_commands))  # sessions first, then older
    margins = sorted({s.margin_pp for s in stats})
    margin = "given with each study"
    if len(margins) == 1:
        margin = f"±{margins[0]:g} pp here"
    elif margins:
        margin = f"±{margins[0]:g} to ±{margins[-1]:g} pp, {margin}"
    out = [
        "Generated by `tricklab report DIR --markdown FILE` from the lab's `results.sqlite`: every number on this page "
        "is computed from the runs stored there (regenerate it rather than edit it).",
        "",
        "- **Produced by:** " + ", ".join(_command(c) for c in commands) if commands else "- **Produced by:** —",
    ]
    machines = list(dict.fromkeys(json.dumps(x["machine"], sort_keys=True) for x in sessions if x["machine"]))
    if len(machines) == 1:
        out.append(f"- **Machine:** {md(machine_text(json.loads(machines[0])))}")
    elif machines:
        out.append("- **Machines:**")
        out += [f"  - {md(machine_text(json.loads(m)))}" for m in machines]
    else:
        out.append("- **Machine:** not recorded (this lab ran before tricklab recorded its sessions)")
    out.append(f"- **Wall time:** {sessions_text(sessions)}")
    sequential = [s for s in stats if any(v.decision and v.decision.sequential for v in s.variants)]
    if sequential and len(sequential) == len(stats):
        cap = max(v.decision.cap or 0 for s in sequential for v in s.variants if v.decision)
        outcomes = (
            "- **Outcomes** (`--seeds auto`): each variant's test accuracy is compared with its baseline's on the "
            "same seeds. Every comparison started with 3 seeds; seeds were added, at 5, 7 and 10 (up to "
            f"{cap}), only to comparisons still undecided, with a group-sequential design that stays valid under "
            "that optional stopping (`src/tricklab/lab/sequential.py`): each look spends part of α (α·t²), the "
            f"repeated p-values are Holm-adjusted within the study (family-wise α = {ALPHA:g}): **better** or "
            "**worse** when significant; **equivalent** when the repeated 95% interval lies inside the study's "
            f"margin of practical equivalence ({margin}); otherwise undecided. The Δ column gives the mean and "
            'repeated interval at the look that decided ("at n" seeds), the p column the repeated p-value '
            "(Holm); the test accuracy column is over all the variant's seeds (mean ± half-width of the Student-t "
            "95% interval)."
        )
    else:
        outcomes = (
            "- **Outcomes:** each variant's test accuracy is compared with its baseline's on the same seeds (paired "
            "t-test). Within a study the p-values are Holm-adjusted over its comparisons (family-wise "
            f"α = {ALPHA:g}): **better** or **worse** when significant; **equivalent** when the whole 95% "
            f"confidence interval of the difference lies inside the study's margin of practical equivalence "
            f"({margin}); otherwise undecided, with about how many seeds would decide it. Intervals are Student-t "
            "95% intervals over seeds (mean ± half-width)."
            + (" Studies run with `--seeds auto` say so in their section." if sequential else "")
        )
    out += [outcomes, ""]
    if len(sessions) > 1:
        out += ["<details><summary>Sessions</summary>", "", "| started (UTC) | command | runs done | wall time |"]
        out.append("|:--|:--|--:|--:|")
        for x in sessions:
            out.append(
                f"| {_date(x['started_at'], minutes=True)} | {_cell(_command(x['command']))} | {x['runs_done']} | "
                f"{duration(x['wall_time_s'])} |"
            )
        out += ["", "</details>", ""]
    return out


def sessions_text(sessions: list[dict]) -> str:
    """``"5 h 12 min over 3 sessions, 2024-05-01 to 2024-05-03 (UTC)"`` from the recorded sessions."""
    if not sessions:
        return "not recorded (this lab ran before tricklab recorded its sessions)"
    total = sum(x["wall_time_s"] for x in sessions)
    runs = sum(x["runs_done"] for x in sessions)
    first, last = _date(sessions[0]["started_at"]), _date(max(x["started_at"] + x["wall_time_s"] for x in sessions))
    dates = first if first == last else f"{first} to {last}"
    n = len(sessions)
    return f"{duration(total)} over {n} session{'s' * (n != 1)} ({runs} runs trained), {dates} (UTC)"


def machine_text(m: dict[str, Any]) -> str:
    """One line from a :func:`tricklab.lab.machine.machine_info` dict; keys it does not know are appended."""
    parts = []
    hw = [str(m["cpu"])] if "cpu" in m else []
    hw += [f"{m['cores']} cores"] if "cores" in m else []
    hw += [f"{m['ram_gib']:g} GiB RAM"] if _is_number(m.get("ram_gib")) else []
    if hw:
        parts.append(", ".join(hw))
    if "os" in m:
        parts.append(str(m["os"]))
    sw = [
        f"{name} {m[key]}"
        for key, name in (("python", "Python"), ("torch", "torch"), ("tricklab", "tricklab"))
        if key in m
    ]
    if sw:
        parts.append(", ".join(sw))
    if m.get("git_commit"):
        dirty = " with uncommitted changes" if m.get("git_dirty") else ""
        parts.append(f"commit {str(m['git_commit'])[:12]}{dirty}")
    known = {"cpu", "cores", "ram_gib", "os", "python", "torch", "tricklab", "git_commit", "git_dirty"}
    parts += [f"{k} {m[k]}" for k in sorted(m) if k not in known]
    return "; ".join(parts) or "not recorded"


def _summary(studies) -> list[str]:
    out = [
        f"| study | comparison | Δ test acc, pp [95% CI] | p (Holm) | outcome | {PROB_COLUMN} | seeds |",
        "|:--|:--|--:|--:|:--|--:|--:|",
    ]
    for s, _, command, _ in studies:
        link = f"[{md(_title(s), brackets=True)}](#{anchor(_title(s))})"
        link += f" — *{md(PREVIEW)}*" if is_preview(command) else ""
        for v, row in zip(s.variants, table_rows(s), strict=True):
            if v.comparison is None:
                continue
            cells = [
                link,
                md(f"{v.name} vs {v.baseline}"),
                md(row[DIFF_COLUMN]),
                md(row[P_COLUMN]),
                _outcome(v, row[OUTCOME_COLUMN]),
                md(prob_cell(v)),
                md(row[SEEDS_COLUMN]),
            ]
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return out


def _findings(fs: list[StudyFindings]) -> list[str]:
    """The "Findings" section: a preview warning, the table of studies, one takeaway per study."""
    out = ["## Findings", ""]
    previews = [f.title for f in fs if f.preview]
    if previews:
        out += [f"> **Preview:** {md(', '.join(previews))} {md(PREVIEW_NOTE)}.", ""]
    out += ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|:--|:--|:--|:--|--:|"]
    for f, row in zip(fs, summary_rows(fs), strict=True):
        cells = [md(c) for c in row]
        cells[0] = f"[{md(f.title, brackets=True)}](#{anchor(f.title)})" + (f" — *{md(PREVIEW)}*" if f.preview else "")
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    out += ["", md(SUMMARY_NOTE), ""]
    out += [f"- {_takeaway(f)}" for f in fs] + [""]
    return out


def _takeaway(f: StudyFindings, titled: bool = True) -> str:
    """One study's takeaway line in Markdown: the best variant and its lead, each claim's verdict in bold; headed
    by the study's name (``titled``) where it stands among others."""
    best = f.best
    head = f"**{md(f.title)}**" + (f" — *{md(PREVIEW)}*" if f.preview else "") + ": " if titled else ""
    if best is None:
        head += "no variant has finished a run yet." if titled else "No variant has finished a run yet."
    elif f.silent:
        text = f"{SILENT} ({best.name} {best.mean * 100:.2f}% test accuracy at best)."
        head += md(text if titled else text[0].upper() + text[1:])
    else:
        head += f"{'best' if titled else 'Best'} is **{md(best.name)}** ({best.mean * 100:.2f}% test accuracy), "
        head += f"{md(lead_text(f))}."
    claims = "".join(
        f" {CLAIM_COLOURS[c.status][3]} Claim **{md(c.label)}**: {md(c.claim.text)} ({md(claim_detail(c))})."
        for c in f.claims
    )
    return head + claims


def _section(
    s: StudyStats,
    spec: dict,
    command: str,
    plots: list[tuple[Path, str]],
    *,
    finding: StudyFindings | None = None,
    rows: list | None = None,
) -> list[str]:
    out = [f"## {md(_title(s))}", ""]
    if finding is not None and finding.preview:
        out += [f"> **Preview:** this study {md(PREVIEW_NOTE)}.", ""]
    if finding is not None:
        out += [_takeaway(finding, titled=False), ""]
    doc = spec.get("doc", "").strip()
    if doc:
        out += [prose(doc), ""]
    if s.target:
        out += [f"Target validation accuracy (for *epochs to target*): {s.target:.0%}.", ""]
    if s.pending:
        out += [f"> **Note:** {s.pending} run(s) not finished yet: rerun the command below to complete them.", ""]
    out.append("| " + " | ".join(COLUMNS) + " |")
    out.append("|" + "|".join(":--" if c in LEFT_COLUMNS else "--:" for c in COLUMNS) + "|")
    for v, row in zip(s.variants, table_rows(s), strict=True):
        cells = [md(c) for c in row]
        cells[OUTCOME_COLUMN] = _outcome(v, row[OUTCOME_COLUMN])
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    out += ["", "Mean ± half-width of the 95% Student-t interval over seeds. " + rule(s), ""]
    verdicts = [f"{v.name}: {not_run(v)} yet" if not_run(v) else v.verdict for v in s.variants if v.comparison]
    if verdicts:
        out += [f"- {md(text)}" for text in verdicts] + [""]
    out += _speed_lines(s)
    for path, alt in plots:
        out += [f"![{md(alt, brackets=True)}]({quote(path.parent.name + '/' + path.name)})", ""]
    overrides = shown_overrides(spec.get("overrides", {}), rows or [])
    if overrides:
        out += ["<details><summary>Exact configs (overrides of the defaults; seed = 0 … seeds − 1)</summary>", ""]
        block = [f"{name}:" + "".join(f"\n  {k}: {val}" for k, val in o.items()) for name, o in overrides.items()]
        fence = _fence("\n".join(block), 3)
        out += [fence, *block, fence, "", "</details>", ""]
    out += [f"**Reproduce:** {_command(reproduce_command(command, s.study))}", ""]
    return out


def _speed_lines(s: StudyStats) -> list[str]:
    """The time-to-target table, rule and verdicts of each speed outcome the study judges
    (:func:`tricklab.report.lab_report.speed_rows`)."""
    from tricklab.report.lab_report import SPEED_COLUMNS, SPEED_OUTCOME_COLUMN, speed_rows, speed_rule

    out: list[str] = []
    for key in (o for o in s.outcomes if o != "test_acc"):
        rows = speed_rows(s, key)
        if not rows:
            continue
        out += [f"**{key.replace('_', ' ').capitalize()}**", ""]
        out.append("| " + " | ".join(SPEED_COLUMNS) + " |")
        out.append(
            "|"
            + "|".join(":--" if i in (0, 1, SPEED_OUTCOME_COLUMN) else "--:" for i in range(len(SPEED_COLUMNS)))
            + "|"
        )
        for outcome, cells in rows:
            shown = [md(c) for c in cells]
            if outcome in (BETTER, WORSE, EQUIVALENT):
                shown[SPEED_OUTCOME_COLUMN] = f"**{shown[SPEED_OUTCOME_COLUMN]}**"
            out.append("| " + " | ".join(_cell(c) for c in shown) + " |")
        out += ["", speed_rule(s, key), ""]
        out += [f"- {md(v.speed_verdicts[key])}" for v in s.variants if key in v.speed_verdicts] + [""]
    return out


def reproduce_command(command: str, study: str) -> str:
    """The stored lab command with its list of studies (``all``, ``dropout bn``) replaced by ``study`` alone.

    Every option is kept (``--dataset``, ``--seeds``, ``--out``…). A command naming no study (``--config FILE``: the
    file is the study) or one that is not a ``tricklab lab`` command line is returned as it is.
    """
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    if words[:2] != ["tricklab", "lab"]:
        return command
    kept: list[str] = []
    named = False
    rest, i, options_done = words[2:], 0, False
    while i < len(rest):
        w = rest[i]
        if not options_done and w == "--":
            options_done = True
            kept.append(w)
        elif not options_done and w.startswith("-") and len(w) > 1:
            kept.append(w)
            takes_value = w not in LAB_FLAGS and "=" not in w and not (not w.startswith("--") and len(w) > 2)
            if takes_value and i + 1 < len(rest):
                i += 1
                kept.append(rest[i])
        elif not named:
            kept.append(study)
            named = True
        i += 1
    if not named:
        return command
    return shlex.join(["tricklab", "lab", *kept])


# ------------------------------------------------------------------------------------------------------- helpers


def _title(s: StudyStats) -> str:
    return f"{s.study} on {s.dataset}"


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return quote(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))


def _outcome(v, label: str) -> str:
    """The outcome cell as text: decided outcomes in bold (``**better**``), undecided and baselines plain."""
    if v.decision is not None and v.decision.outcome in (BETTER, WORSE, EQUIVALENT):
        return f"**{md(label)}**"
    return md(label)


# formatting characters; an underscore inside a word (``he_normal``) never is one in GitHub's Markdown: left as is
_MD_SPECIAL = re.compile(r"([\\`*~$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
_HTML_START = re.compile(r"<(?=[A-Za-z/!?])")  # what GitHub would read as an HTML tag, comment or declaration
_ENTITY = re.compile(r"&(?=#?[A-Za-z0-9]+;)")  # what it would read as a character reference


def prose(text: str) -> str:
    """Text from the database shown as Markdown prose (a study's description): kept as written, but an HTML tag or
    a character reference in it is shown as text, never rendered."""
    return _HTML_START.sub("&lt;", _ENTITY.sub("&amp;", str(text)))


def md(text: str, brackets: bool = False) -> str:
    """Text from the database (a variant's or study's name, a verdict) shown literally in Markdown: on one line,
    with every character that GitHub-flavoured Markdown would read as formatting escaped (emphasis, code,
    strikethrough, math, HTML, a link's ``](``). ``brackets`` escapes ``[`` and ``]`` too (inside a link's text).
    Pipes are escaped by the table cell that holds the text."""
    out = prose(_MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))).replace("](", "]\\(")
    return out.replace("[", "\\[").replace("]", "\\]") if brackets else out


def _fence(text: str, least: int) -> str:
    """A run of backticks longer than any in ``text`` (at least ``least``): it opens and closes code around it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(least, longest + 1)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _command(command: str) -> str:
    """A command line as inline code, on one line, whatever backticks it holds."""
    if not command:
        return "the Python API (`tricklab.run_lab`)"
    command = " ".join(command.split())
    ticks = _fence(command, 1)
    pad = " " if command.startswith("`") or command.endswith("`") else ""
    return f"{ticks}{pad}{command}{pad}{ticks}"


def _date(ts: float, minutes: bool = False) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M" if minutes else "%Y-%m-%d")


def duration(seconds: float) -> str:
    """``"3 h 05 min"``, ``"12 min 30 s"``, ``"45 s"``."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

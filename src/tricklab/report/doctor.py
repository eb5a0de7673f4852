"""The doctor's pictures and page: gradient norms per layer over steps, activation histograms over time, signal
propagation at init, and a self-contained HTML page (images embedded as base64) with the verdicts.

Only this layer draws; it reads the plain records of :mod:`tricklab.diagnostics` by their metric names.

Example::

    result = run_doctor(cfg)
    write_report(result, "runs/doctor")      # index.html + three PNGs
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tricklab.diagnostics.records import ACT_HIST, WEIGHT, WEIGHT_GRAD_NORM, Findings  # noqa: E402
from tricklab.diagnostics.signal import SignalProfile  # noqa: E402
from tricklab.diagnostics.verdicts import Verdict, as_set_flags  # noqa: E402
from tricklab.outputs import DOCTOR_REPORT, PNG, check_target, draw_file, write_file  # noqa: E402

GRAD_HEATMAP = "grad_norm_heatmap.png"
ACT_HISTOGRAMS = "activation_histograms.png"
SIGNAL_PLOT = "signal_propagation.png"
PAGE = "index.html"
DPI = 80


def plot_grad_heatmap(findings: Findings, path: str | Path) -> Path | None:
    """log10 ‖∂L/∂W‖ per Linear/Conv layer (rows, input at the top) and sampled step (columns); NaN/inf black.

    Vanishing gradients show as a dark band at the top, exploding ones as a bright one. None if nothing
    was recorded.
    """
    layers = [info.name for info in findings.layers_of(WEIGHT)]
    steps = findings.records.steps(WEIGHT_GRAD_NORM)
    if not layers or not steps:
        return None
    grid = np.full((len(layers), len(steps)), np.nan)
    bad = np.zeros_like(grid, dtype=bool)
    for i, name in enumerate(layers):
        for j, step in enumerate(steps):
            v = findings.records.get(WEIGHT_GRAD_NORM, name, step)
            if v is None:
                continue
            if not math.isfinite(v):
                bad[i, j] = True
            elif v > 0:
                grid[i, j] = math.log10(v)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.18 * min(len(layers), 40)))
    try:
        cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
        im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", interpolation="nearest", cmap=cmap)
        if bad.any():
            ax.imshow(np.ma.masked_where(~bad, bad.astype(float)), aspect="auto", cmap="gray_r", vmin=0, vmax=1)
        fig.colorbar(im, ax=ax, label="log10 ‖∂L/∂W‖")
        _ticks(ax.set_yticks, ax.set_yticklabels, layers, 25)
        _ticks(ax.set_xticks, ax.set_xticklabels, [str(s) for s in steps], 12)
        ax.set_xlabel("step")
        ax.set_title("weight-gradient norm per layer (black: NaN/inf)")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return Path(path)


def plot_activation_histograms(findings: Findings, path: str | Path, max_layers: int = 8) -> Path | None:
    """Per activation layer (up to ``max_layers``, spread over depth): the histogram of its outputs (y axis)
    at each sampled step (x axis), colour log10 of the fraction. Saturation piles up at the edges, dead ReLUs
    at 0, exploding values at the clipped top edge."""
    acts = [info for info in findings.layers if info.hist_range and findings.records.layers(ACT_HIST)]
    acts = [info for info in acts if info.name in findings.records.layers(ACT_HIST)]
    if not acts:
        return None
    if len(acts) > max_layers:
        acts = [acts[round(i * (len(acts) - 1) / (max_layers - 1))] for i in range(max_layers)]
    cols = min(4, len(acts))
    rows = math.ceil(len(acts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    try:
        for ax in axes.flat[len(acts) :]:
            ax.axis("off")
        for ax, info in zip(axes.flat, acts, strict=False):
            steps, hists = findings.records.series(ACT_HIST, info.name)
            image = np.log10(np.asarray(hists, dtype=float).T + 1e-4)
            lo, hi = info.hist_range
            right = steps[-1] if len(steps) > 1 else steps[0] + 1
            ax.imshow(
                image,
                aspect="auto",
                origin="lower",
                extent=(steps[0], right, lo, hi),
                cmap="magma",
                vmin=-4,
                vmax=0,
                interpolation="nearest",
            )
            ax.set_title(f"{info.name} ({info.kind})", fontsize="small")
            ax.set_xlabel("step", fontsize="small")
            ax.tick_params(labelsize="x-small")
        fig.suptitle("activation histograms over time (colour: log10 fraction of outputs)", fontsize="medium")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return Path(path)


def plot_signal(profiles: list[SignalProfile], path: str | Path, highlight: str | None = None) -> Path | None:
    """Forward activation std and backward gradient std vs depth (log y), one line per init scheme.

    Flat lines keep values in range; ``highlight`` (the config's scheme) is drawn thicker.
    """
    usable = [p for p in profiles if p.error is None and p.layers]
    if not usable:
        return None
    fig, (fwd, bwd) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    try:
        colors = plt.get_cmap("tab20")
        for i, p in enumerate(usable):
            depth = np.arange(1, len(p.layers) + 1)
            style = dict(color=colors(i % 20), linewidth=2.8 if p.scheme == highlight else 1.2, label=p.scheme)
            fwd.plot(depth, _positive(p.forward_std), marker=".", **style)
            bwd.plot(depth, _positive(p.backward_std), marker=".", **style)
        for ax, what in ((fwd, "forward: std of each layer's output"), (bwd, "backward: std of ∂L/∂output")):
            ax.set_yscale("log")
            ax.set_xlabel("depth (Linear/Conv layer)")
            ax.set_title(what, fontsize="medium")
            ax.grid(True, which="major", alpha=0.3)
        fwd.set_ylabel("std (log scale)")
        bwd.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.suptitle("signal propagation at initialization, per init scheme", fontsize="medium")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return Path(path)


class DoctorView(Protocol):
    """What the page reads of a doctor's result (:class:`tricklab.diagnostics.doctor.DoctorResult`): plain data,
    so that this layer draws it without importing the doctor that produced it."""

    config: Any  # the examined Config, or None for a model of your own
    findings: Findings
    verdicts: list[Verdict]
    signal: list[SignalProfile]
    prescription: dict[str, Any]
    recheck: Any  # a Recheck, or None
    wall_time_s: float
    settings: dict[str, Any]
    pytorch: dict[str, str]

    @property
    def healthy(self) -> bool: ...


def write_report(result: DoctorView, out_dir: str | Path, force: bool = False) -> Path:
    """Write the three plots and ``index.html`` (self-contained: images embedded) into ``out_dir``.

    Each file goes through :mod:`tricklab.outputs`: an existing one is replaced only when it is tricklab's own (a
    doctor page, a PNG) or with ``force``; a link, folder or device at its path is refused (one line, exit 2).
    """
    out = Path(out_dir)
    targets = {GRAD_HEATMAP: PNG, ACT_HISTOGRAMS: PNG, SIGNAL_PLOT: PNG, PAGE: DOCTOR_REPORT}
    for name, kind in targets.items():  # every refusal before anything is written
        check_target(out / name, kind, force=force)
    highlight = result.settings.get("init.scheme")
    draws = {
        "Gradient norm per layer over steps": (lambda p: plot_grad_heatmap(result.findings, p), GRAD_HEATMAP),
        "Activation histograms over time": (lambda p: plot_activation_histograms(result.findings, p), ACT_HISTOGRAMS),
        "Signal propagation at initialization": (
            lambda p: plot_signal(result.signal, p, highlight=highlight),
            SIGNAL_PLOT,
        ),
    }
    images = {title: draw_file(out / name, draw, PNG, force=force) for title, (draw, name) in draws.items()}
    page = _page(result, {title: p for title, p in images.items() if p is not None})
    return write_file(out / PAGE, page, DOCTOR_REPORT, force=force)


# --- helpers ------------------------------------------------------------------------------------------------------


def _positive(values: list[float]) -> list[float]:
    return [v if isinstance(v, float) and math.isfinite(v) and v > 0 else float("nan") for v in values]


def _ticks(set_ticks, set_labels, labels: list[str], most: int) -> None:
    every = max(1, math.ceil(len(labels) / most))
    positions = list(range(0, len(labels), every))
    set_ticks(positions)
    set_labels([labels[i] for i in positions], fontsize="x-small")


def _when(v) -> str:
    """Under a verdict's name: the cause it is a consequence of, or the step at which it was first certain."""
    if v.cause:
        return f"<br><small>a consequence of {html.escape(v.cause)}</small>"
    return f"<br><small>certain at step {v.first_step}</small>" if v.first_step is not None else ""


def _page(result: DoctorView, images: dict[str, Path]) -> str:
    e = html.escape
    f = result.findings
    head = (
        "healthy: no problems found"
        if result.healthy
        else f"{len(result.verdicts)} problem(s) found: {', '.join(v.name for v in result.verdicts)}"
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>tricklab doctor</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
        "table{border-collapse:collapse}code,pre{background:#f4f4f4}img{max-width:100%}"
        ".bad{color:#b00}.good{color:#070}</style></head><body>",
        "<h1>tricklab doctor</h1>",
        f"<p class='{'good' if result.healthy else 'bad'}'><b>{e(head)}</b> in {f.steps} steps "
        f"(probes every {f.every} steps, {result.wall_time_s:.1f}s).</p>",
    ]
    if f.first_nonfinite is not None:
        parts.append(f"<p class='bad'>First non-finite value: {e(str(f.first_nonfinite))}</p>")
    if result.verdicts:
        rows = "".join(
            f"<tr><td><b>{e(v.name)}</b>{_when(v)}</td><td>{e(v.summary)}</td><td>{e(_short(v.layers))}</td>"
            f"<td><code>{e(as_set_flags(v.prescription) or (v.code if v.cause is None else ''))}</code></td>"
            f"<td>{e(v.advice)}</td></tr>"
            for v in result.verdicts
        )
        parts.append(
            "<h2>Verdicts</h2><table><tr><th>verdict</th><th>figures</th><th>layers</th><th>prescription</th>"
            f"<th>why</th></tr>{rows}</table>"
        )
        if result.pytorch:
            items = "".join(f"<li>{e(sentence)}</li>" for sentence in result.pytorch.values())
            parts.append(f"<h3>In PyTorch</h3><ul>{items}</ul>")
        parts.append(f"<p>{'With tricklab' if result.pytorch else 'All together'}: "
                     f"<code>{e(as_set_flags(result.prescription))}</code></p>")  # fmt: skip
    if result.recheck is not None:
        r = result.recheck
        if r.error:
            text, cls = f"the prescription could not be applied: {r.error}", "bad"
        elif r.healthy:
            text, cls = "cured: no problems left", "good"
        else:
            left = "; ".join(f"{v.name}: {v.summary}" for v in r.verdicts)
            text, cls = (
                f"{'cured' if r.cured else 'not cured'}; remaining: {left}",
                "good" if r.cured else "bad",
            )
        parts.append(
            f"<h2>Re-check with the prescription</h2><p><code>{e(as_set_flags(r.overrides))}</code>: "
            f"<span class='{cls}'>{e(text)}</span></p>"
        )
        if getattr(r, "not_applied", None):
            parts.append(
                f"<p>Not tried (change your model's code for these): <code>{e(as_set_flags(r.not_applied))}</code></p>"
            )
    for title, path in images.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{data}'>")
    if result.config is not None:
        parts.append(f"<h2>Config</h2><pre>{e(result.config.to_yaml())}</pre>")
    else:
        settings = "\n".join(f"{k}: {v}" for k, v in result.settings.items())
        parts.append(f"<h2>Model of your own: settings as seen by the doctor</h2><pre>{e(settings)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def inline_html(result: DoctorView) -> str:
    """The report's body for a notebook cell (Jupyter's ``_repr_html_``): the verdicts, re-check and plots."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        page = write_report(result, tmp).read_text(encoding="utf-8")
    body = page[page.index("<body>") + len("<body>") : page.rindex("</body>")]
    style = page[page.index("<style>") : page.index("</style>") + len("</style>")]
    return f"<div class='tricklab-doctor'>{style.replace('body{', '.tricklab-doctor{')}{body}</div>"


def _short(layers: tuple[str, ...], most: int = 6) -> str:
    if len(layers) <= most:
        return ", ".join(layers)
    return f"{', '.join(layers[:most])} (+{len(layers) - most} more)"

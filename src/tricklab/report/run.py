"""Draw one run for a notebook: its final metrics and its loss and accuracy curves (``RunResult._repr_html_``)."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tricklab.metrics import TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS  # noqa: E402

#: Final metrics shown first, in this order, when a run has them.
SHOWN = ("test_acc", "test_loss", "best_val_acc", "epochs_run", "wall_time_s", "stop_reason")


def curves_png(history: list[dict[str, Any]]) -> bytes | None:
    """Loss and accuracy per epoch (training and validation) as PNG bytes; None without history."""
    rows = [r for r in history if r.get("member", 0) == 0]
    if not rows:
        return None
    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, keys, label in ((left, (TRAIN_LOSS, VAL_LOSS), "loss"), (right, (TRAIN_ACC, VAL_ACC), "accuracy")):
        for key in keys:
            values = [r.get(key, math.nan) for r in rows]
            ax.plot(epochs, values, marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def run_html(result) -> str:
    e = html.escape
    m = result.metrics
    keys = [k for k in SHOWN if k in m] + [k for k in m if k not in SHOWN and not isinstance(m[k], (dict, list))]
    cells = "".join(f"<tr><th>{e(k)}</th><td>{e(_fmt(m[k]))}</td></tr>" for k in keys)
    where = f"<p>run directory: <code>{e(str(result.run_dir))}</code></p>" if result.run_dir else ""
    png = curves_png(result.history)
    img = f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'>" if png else ""
    name = f"{result.config.model.name} on {result.config.data.name}"
    return (
        f"<div class='tricklab-run'><b>tricklab run: {e(name)}</b>{where}"
        f"<table style='border-collapse:collapse'>{cells}</table>{img}</div>"
    )


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)

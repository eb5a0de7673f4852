"""Plot of an LR range test: loss against learning rate on a log axis, with the suggestion marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tricklab.tricks.lr_finder import LRFindResult  # noqa: E402


def plot_lr_find(result: LRFindResult, path: str | Path) -> Path:
    """Draw raw and smoothed loss vs LR (log x) with both suggestions marked; save a PNG at ``path``.

    The title gives the steepest-descent suggestion and the clarity (Smith 2017's LR range test).

    Example::

        plot_lr_find(lr_range_test(model, batches, loss_fn, make_sgd), "runs/lr_find.png")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss (per batch)")
        ax.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed loss")
        ax.set_xscale("log")
        at = result.lrs.index(result.suggestion)  # the suggestion is one of the recorded LRs
        marked = f"steepest descent {result.suggestion:.2g}"
        ax.axvline(result.suggestion, color="C3", linestyle="--", linewidth=1)
        ax.plot([result.suggestion], [result.smoothed[at]], "o", color="C3", label=marked)
        minimum = f"min / 10 {result.lr_min_div10:.2g}"
        ax.axvline(result.lr_min_div10, color="C2", linestyle=":", linewidth=1, label=minimum)
        low, high = min(result.losses + result.smoothed), max(result.smoothed[0], result.losses[0])
        if result.diverged and high > low:  # keep the blow-up from flattening the interesting part
            ax.set_ylim(low - 0.05 * (high - low), high + 0.5 * (high - low))
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("loss")
        clarity = f"{result.verdict}, clarity {result.clarity:.2f}"
        ax.set_title(f"LR range test: suggest {result.suggestion:.2g} ({clarity})")
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path

"""OTB-style success and precision plots: several trackers per figure, legend ``NAME [score]`` by score.

Headless on purpose (Agg): evaluation runs on servers without a display.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evaluate.metrics import CE_THRESHOLDS, IOU_THRESHOLDS, Curves  # noqa: E402
from evaluate.results import displayable  # noqa: E402

_STYLES = ["-", "--", "-.", ":"]


def _legend_text(name: str) -> str:
    """A tracker (folder) name as literal legend text: bytes that are not UTF-8 (held as surrogates, which the text
    renderer refuses) become U+FFFD, and ``$`` is escaped so that matplotlib does not parse it as math."""
    return displayable(name).replace("$", r"\$")


def _plot(
    curves: Mapping[str, Curves],
    path: Path,
    kind: str,
    title: str,
) -> Path:
    if kind == "success":
        x, score, get = IOU_THRESHOLDS, (lambda c: c.success_auc), (lambda c: c.success)
        xlabel, xlim = "Overlap threshold (IoU)", (0.0, 1.0)
        tag = "AUC"
    else:
        x, score, get = CE_THRESHOLDS, (lambda c: c.precision_20), (lambda c: c.precision)
        xlabel, xlim = "Location error threshold (pixels)", (0.0, float(CE_THRESHOLDS.max()))
        tag = "P@20"
    order = sorted(curves, key=lambda n: score(curves[n]), reverse=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(order):
        ax.plot(
            x,
            get(curves[name]),
            _STYLES[(i // 10) % len(_STYLES)],
            color=cmap(i % 10),
            linewidth=2.0 if i == 0 else 1.5,
            label=f"{_legend_text(name)} [{score(curves[name]):.3f}]",
        )
    ax.set(xlabel=xlabel, ylabel="Success rate" if kind == "success" else "Precision", xlim=xlim, ylim=(0, 1))
    ax.set_title(f"{title} ({tag} in brackets)")
    ax.grid(True, alpha=0.4)
    ax.legend(loc="lower left" if kind == "success" else "lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def success_plot(curves: Mapping[str, Curves], path: str | Path, title: str = "Success plots of OPE") -> Path:
    """Success rate over the 21 IoU thresholds, one line per tracker, legend ``NAME [AUC]``."""
    return _plot(curves, Path(path), "success", title)


def precision_plot(curves: Mapping[str, Curves], path: str | Path, title: str = "Precision plots of OPE") -> Path:
    """Precision over 0..50 px, one line per tracker, legend ``NAME [P@20]``."""
    return _plot(curves, Path(path), "precision", title)

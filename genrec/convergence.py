"""Has a run converged? Its val curve read for a plateau, and a study's curves plotted.

A scaling study's points must be at convergence (issue 21): a run that was still improving when
its schedule ended says less about its size than about its budget. A run's ``result.json``
records its val curve (``val_curve.points``: ``[epoch, value]`` pairs of the monitored metric,
higher is better). From it:

* :func:`late_gain` — how much the curve's best value rose in the last quarter of the epochs it
  records, relative to its best before them: about 0 for a curve that had flattened, clearly
  positive for one still rising. The report flags a run above :data:`RISING` (1 %).
* :func:`plot_val_curves` — every run's curve, one panel per sweep, for the eye to check.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from genrec.artifacts import atomic_path

RISING = 0.01
"""A late gain above this (1 % of the earlier best) marks a run as still rising at its end."""

TAIL = 0.25
"""The share of the recorded epochs that :func:`late_gain` calls late."""


def late_gain(points: Sequence[Sequence[float]] | None, tail: float = TAIL) -> float | None:
    """The relative gain of the curve's best value in its last ``tail`` of epochs.

    Args:
        points: ``[epoch, value]`` pairs (any order; higher values are better).
        tail: the late share of the span from the first to the last recorded epoch.

    Returns:
        ``(best late - best before) / best before`` (negative when the late values stay below the
        earlier best); ``None`` with fewer than 3 points, no point before the tail, or a
        non-positive earlier best (nothing to be relative to).
    """
    if not points or len(points) < 3:
        return None
    pairs = sorted((float(e), float(v)) for e, v in points)
    first, last = pairs[0][0], pairs[-1][0]
    cut = last - tail * (last - first)
    before = [v for e, v in pairs if e < cut]
    late = [v for e, v in pairs if e >= cut]
    if not before or not late or not max(before) > 0 or any(math.isnan(v) for v in before + late):
        return None
    return (max(late) - max(before)) / max(before)


def plot_val_curves(panels: Mapping[str, Sequence[tuple[str, Sequence[Sequence[float]], bool]]], path: str | os.PathLike[str],
                    metric_label: str = "val metric") -> Path:
    """Plot val curves, one panel per entry of ``panels``; written atomically as PNG.

    Args:
        panels: panel title (a sweep) -> its runs as ``(label, points, chosen)``: the legend
            label, the ``[epoch, value]`` pairs, and whether the run counts in the study (solid;
            the others, e.g. learning rates not chosen, dotted and thin). Runs whose labels differ
            only in a last `` s<seed>`` word share a colour (the seeds of one size and lr).
        path: destination ``.png``.
        metric_label: the y axis' label.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    names = list(panels)
    if not names:
        raise ValueError(f"{path}: no val curves to plot")
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    try:
        for ax, name in zip(axes.flat, names, strict=False):
            colours: dict[str, str] = {}
            for label, points, chosen in panels[name]:
                pairs = sorted((float(e), float(v)) for e, v in points)
                group = re.sub(r" s\d+$", "", label)
                colour = colours.setdefault(group, f"C{len(colours) % 10}")
                ax.plot([e for e, _ in pairs], [v for _, v in pairs], "-" if chosen else ":", color=colour,
                        lw=1.4 if chosen else 0.9, label=label)
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric_label)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=6, ncol=2)
        for ax in list(axes.flat)[len(names):]:
            ax.set_visible(False)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


__all__ = ["RISING", "TAIL", "late_gain", "plot_val_curves"]

"""Evaluation plots written as PNG files (matplotlib, Agg canvas, no pyplot).

Contract
--------
Each function draws one `matplotlib.figure.Figure` on its own Agg canvas, writes it to `path` as PNG and returns
the path; nothing is registered with pyplot, so no figure outlives the call and no global state changes. Times
are int ns since the Unix epoch (UTC) and drawn as dates. Shapes are checked (PlotError, a ValueError); the
caller's arrays are never modified.

* `plot_score_timeline`: one turbine's anomaly score and threshold (scalar or per step) over time, alert spans
  [start, end] shaded, labelled fault events (start, end, name) as a band along the top with their name (those
  outside the plotted time left out).
* `plot_contribution_heatmap`: per-feature contributions (T, F) around an alert, features sorted by total
  contribution (largest on top), the alert start as a vertical line; or any other per-step values of named
  signals (the edge's group ratios), named by `label`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = ["PlotError", "plot_contribution_heatmap", "plot_score_timeline"]

_DPI = 100


class PlotError(ValueError):
    """Plot inputs have inconsistent shapes or times."""


def _times(ts_ns: Any, name: str) -> np.ndarray:
    ts = np.asarray(ts_ns)
    if ts.ndim != 1 or ts.size == 0 or ts.dtype.kind not in "iu":
        raise PlotError(f"{name}: ts_ns must be a non-empty (T,) integer array of ns, got {ts.dtype} {ts.shape}")
    if (np.diff(ts) <= 0).any():
        raise PlotError(f"{name}: ts_ns must be strictly increasing")
    return ts.astype("datetime64[ns]")


def _date(t_ns: int) -> np.datetime64:
    return np.datetime64(int(t_ns), "ns")


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


def plot_score_timeline(
    path: str | Path,
    ts_ns: Any,
    score: Any,
    threshold: float | Any,
    alert_spans: Sequence[tuple[int, int]],
    fault_events: Sequence[tuple[int, int, str]],
    title: str,
) -> Path:
    """Score and threshold over time for one turbine, alert spans shaded, labelled fault events marked."""
    t = _times(ts_ns, "plot_score_timeline")
    s = np.asarray(score, np.float64)
    thr = np.asarray(threshold, np.float64)
    thr = np.full(t.shape, thr) if thr.ndim == 0 else thr
    if s.shape != t.shape or thr.shape != t.shape:
        raise PlotError(
            f"plot_score_timeline: score and threshold must be scalar or ({t.size},), got {s.shape} and {thr.shape}"
        )
    fig = Figure(figsize=(12, 4), layout="constrained")
    ax = fig.add_subplot()
    for start, end in alert_spans:
        ax.axvspan(_date(start), _date(end), color="tab:orange", alpha=0.25, lw=0)
    first, last = t[[0, -1]].astype(np.int64).tolist()
    for start, end, name in fault_events:
        if end < first or start > last:  # outside the plotted time: an annotation there would squeeze the axes
            continue
        ax.axvspan(_date(start), _date(end), ymin=0.93, ymax=1.0, color="tab:red", alpha=0.8, lw=0)
        ax.axvline(_date(start), color="tab:red", ls=":", lw=1)
        ax.annotate(
            name,
            (_date(max(start, first)), 0.91),
            xycoords=("data", "axes fraction"),
            va="top",
            fontsize=8,
            color="darkred",
            bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1},
        )
    ax.plot(t, s, color="tab:blue", lw=0.8, label="score")
    ax.plot(t, thr, color="black", ls="--", lw=1, label="threshold")
    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color="tab:orange", alpha=0.25, label="alert"), Patch(color="tab:red", label="labelled fault")]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    ax.set_xlim(t[0], t[-1])
    scale, limits = score_axis(s, thr)
    if scale == "symlog":  # linear up to the threshold, logarithmic above: a peak does not flatten the rest
        ax.set_yscale("symlog", linthresh=limits[2])
    ax.set_ylim(limits[0], limits[1])
    ax.set_ylabel("anomaly score" + (f" (log scale above {limits[2]:g})" if scale == "symlog" else ""))
    ax.set_xlabel("time (UTC)")
    ax.set_title(title)
    return _save(fig, path)


LOG_ABOVE = 20.0  # a score this many times the threshold (or more) is drawn on a log scale above the threshold


def score_axis(score: np.ndarray, threshold: np.ndarray) -> tuple[str, tuple[float, float, float]]:
    """A score timeline's y axis: ("linear", (low, high, 0)) with headroom for the fault band; or, when the score
    reaches LOG_ABOVE x the threshold's largest value (a fault far above it, or a level near zero), ("symlog",
    (low, high, threshold)): linear up to the threshold and logarithmic above, so the crossings stay readable."""
    both = np.concatenate([score, threshold])  # a score may be NaN (a fleet-relative one without peers): a gap
    lo, hi = float(np.nanmin(both)), float(np.nanmax(both))
    top = float(np.nanmax(np.abs(threshold)))
    if top > 0 and hi >= LOG_ABOVE * top:
        return "symlog", (min(lo, 0.0) - 0.05 * top, hi * 4.0, top)  # x4: a decade's fraction for the fault band
    return "linear", (lo - 0.05 * (hi - lo or 1.0), hi + 0.25 * (hi - lo or 1.0), 0.0)


def plot_contribution_heatmap(
    path: str | Path,
    ts_ns: Any,
    contrib: Any,
    feature_names: Sequence[str],
    alert_start_ns: int,
    title: str,
    label: str = "contribution",
) -> Path:
    """Feature contributions (T, F) over time, features sorted by total contribution, alert start marked;
    `label` names the values (the colour bar)."""
    t = _times(ts_ns, "plot_contribution_heatmap")
    c = np.asarray(contrib, np.float64)
    names = list(feature_names)
    if c.shape != (t.size, len(names)) or not np.isfinite(c).all():
        raise PlotError(f"plot_contribution_heatmap: contrib must be finite ({t.size}, F={len(names)}), got {c.shape}")
    order = np.argsort(-c.sum(axis=0), kind="mergesort")
    fig = Figure(figsize=(12, 1.5 + 0.25 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(t, np.arange(len(names)), c[:, order].T, shading="nearest", cmap="viridis")
    ax.set_yticks(np.arange(len(names)), [names[i] for i in order], fontsize=8)
    ax.invert_yaxis()  # largest total on top
    ax.axvline(_date(alert_start_ns), color="white", ls="--", lw=1.5)
    ax.set_xlabel("time (UTC)")
    fig.colorbar(mesh, ax=ax, label=label)
    ax.set_title(title)
    return _save(fig, path)

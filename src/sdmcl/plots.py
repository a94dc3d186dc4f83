"""Figures of a run, written as PNG files (atomically: temp file, then rename)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _marker(n_points: int) -> dict:
    """Markers on short series, so that a series of one point is still visible."""
    return {"marker": "o", "markersize": 3.5} if n_points <= 30 else {}


def _save(fig, path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        _pyplot().close(fig)


def plot_task_accuracies(history, path, task_boundaries=None, task_labels=None, title=None) -> None:
    """Accuracy on each task's test set over epochs (the paper's Figure 3 style).

    `history`: dicts {"epoch": int, "task_accuracy": [acc or None per task]}. The thick
    black line is the average over the tasks seen so far.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    T = max((len(h["task_accuracy"]) for h in history), default=0)
    cmap = plt.get_cmap("tab10" if T <= 10 else "viridis")
    for j in range(T):
        pts = [(h["epoch"], h["task_accuracy"][j]) for h in history if j < len(h["task_accuracy"]) and h["task_accuracy"][j] is not None]
        if pts:
            x, y = zip(*pts)
            label = f"task {j + 1}" + (f" ({task_labels[j]})" if task_labels else "")
            ax.plot(x, 100 * np.array(y), color=cmap(j / max(T - 1, 1)) if T > 10 else cmap(j), lw=1.4, label=label,
                    **_marker(len(x)))
    avg = [(h["epoch"], np.mean([a for a in h["task_accuracy"] if a is not None])) for h in history
           if any(a is not None for a in h["task_accuracy"])]
    if avg:
        x, y = zip(*avg)
        ax.plot(x, 100 * np.array(y), color="black", lw=2.5, label="average over seen tasks", **_marker(len(x)))
    for b in task_boundaries or []:
        ax.axvline(b, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title or "Accuracy of every task over training")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, path)


def accuracy_matrix_figure(R, task_labels=None, title=None):
    """Heatmap of R[i, j] (accuracy on task j after training task i), values in percent.
    R may have fewer rows than columns (a run in progress): the rows of tasks not yet
    trained stay blank, so every stage of a run has the same picture size."""
    plt = _pyplot()
    R = np.atleast_2d(np.asarray(R, dtype=float))
    rows, T = R.shape
    if rows < T:
        R = np.vstack([R, np.full((T - rows, T), np.nan)])
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * T, 0.8 + 0.6 * T))
    im = ax.imshow(100 * R, vmin=0, vmax=100, cmap="viridis")
    if T <= 20:
        for i in range(rows):
            for j in range(T):
                ax.text(j, i, f"{100 * R[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if R[i, j] < 0.6 else "black")
    labels = task_labels or [str(i + 1) for i in range(T)]
    if T <= 20:
        ax.set_xticks(range(T), labels, rotation=45, fontsize=7)
        ax.set_yticks(range(T), labels, fontsize=7)
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    ax.set_title(title or "Accuracy matrix (%)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def plot_accuracy_matrix(R, path, task_labels=None, title=None) -> None:
    """The accuracy matrix heatmap as a PNG file."""
    _save(accuracy_matrix_figure(R, task_labels, title), path)


def figure_to_rgb(fig) -> np.ndarray:
    """An (H, W, 3) uint8 image of a figure, cropped as the PNG files are (for loggers);
    the figure is closed."""
    import io

    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    buf.seek(0)
    image = plt.imread(buf, format="png")  # floats in [0, 1], RGBA
    return (image[..., :3] * 255).round().astype(np.uint8)


def plot_dead_neurons(history, path, title=None) -> None:
    """Fraction of hidden neurons inactive for every training input since the previous evaluation."""
    if not history:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = [h["epoch"] for h in history]
    ax.plot(x, [100 * h["fraction_dead"] for h in history], color="crimson", **_marker(len(x)))
    ax.set_xlabel("epoch")
    ax.set_ylabel("dead neurons (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title or "Dead neurons over training")
    _save(fig, path)


def _colors(n: int) -> list:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_curves_over_epochs(curves, path, title=None) -> None:
    """One line per table row: the average test accuracy over the tasks seen so far at each
    evaluated epoch, mean over the row's runs with a ± s.e.m. band (the paper's Figure 3
    style), and the task boundaries as dashed lines (in a row's colour when rows differ in them).

    `curves`: objects with `label`, `epochs`, `mean` (%), `sem` (% or None), `n` and `boundaries`.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    colors = _colors(len(curves))
    shared = all(list(c.boundaries) == list(curves[0].boundaries) for c in curves)
    for c, color in zip(curves, colors):
        x = np.asarray(c.epochs, dtype=float)
        m = np.asarray(c.mean, dtype=float)
        e = np.asarray([s if s is not None else 0.0 for s in c.sem], dtype=float)
        runs = max(c.n) if len(c.n) else 0
        ax.plot(x, m, color=color, lw=1.6, label=f"{c.label} (n={runs})", **_marker(len(x)))
        if np.any(e > 0):
            ax.fill_between(x, m - e, m + e, color=color, alpha=0.2, lw=0)
        if not shared:
            for b in c.boundaries:
                ax.axvline(b, color=color, ls=":", lw=0.8, alpha=0.7)
    if shared and curves:
        for b in curves[0].boundaries:
            ax.axvline(b, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("average accuracy over seen tasks (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title or "Accuracy over training (mean ± s.e.m. over runs; dashed: task boundaries)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, path)


def plot_final_accuracy_bars(bars, path, title=None) -> None:
    """Horizontal bars: final average accuracy (%) per table row, mean ± s.e.m. (no error
    bar for a single run), every run as a dot. `bars`: (label, [value % per run])."""
    plt = _pyplot()
    n = len(bars)
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.45 * max(n, 1)))
    colors = _colors(n)
    for i, ((label, values), color) in enumerate(zip(bars, colors)):
        v = np.asarray(values, dtype=float)
        if not v.size:
            continue
        mean = float(v.mean())
        sem = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else None
        ax.barh(i, mean, color=color, alpha=0.75, xerr=sem, capsize=3 if sem else 0)
        ax.scatter(v, np.full(v.size, i), color="black", s=10, zorder=3)
        ax.text(min(max(float(v.max()), mean + (sem or 0)) + 1.5, 101), i, f"{mean:.1f}" + (f" ± {sem:.1f}" if sem else ""),
                va="center", fontsize=7)
    ax.set_yticks(range(n), [label for label, _ in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xlabel("final average accuracy over all tasks (%)")
    ax.set_title(title or "Final average accuracy (mean ± s.e.m.; dots: runs)")
    _save(fig, path)

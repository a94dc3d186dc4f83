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
            ax.plot(x, 100 * np.array(y), color=cmap(j / max(T - 1, 1)) if T > 10 else cmap(j), lw=1.4, label=label)
    avg = [(h["epoch"], np.mean([a for a in h["task_accuracy"] if a is not None])) for h in history
           if any(a is not None for a in h["task_accuracy"])]
    if avg:
        x, y = zip(*avg)
        ax.plot(x, 100 * np.array(y), color="black", lw=2.5, label="average over seen tasks")
    for b in task_boundaries or []:
        ax.axvline(b, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title or "Accuracy of every task over training")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, path)


def plot_accuracy_matrix(R, path, task_labels=None, title=None) -> None:
    """Heatmap of R[i, j] (accuracy on task j after training task i), values in percent."""
    plt = _pyplot()
    R = np.asarray(R, dtype=float)
    T = len(R)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * T, 0.8 + 0.6 * T))
    im = ax.imshow(100 * R, vmin=0, vmax=100, cmap="viridis")
    if T <= 20:
        for i in range(T):
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
    _save(fig, path)


def plot_dead_neurons(history, path, title=None) -> None:
    """Fraction of hidden neurons inactive for every training input since the previous evaluation."""
    if not history:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = [h["epoch"] for h in history]
    ax.plot(x, [100 * h["fraction_dead"] for h in history], color="crimson")
    ax.set_xlabel("epoch")
    ax.set_ylabel("dead neurons (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title or "Dead neurons over training")
    _save(fig, path)

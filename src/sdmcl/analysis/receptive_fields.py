"""`sdmcl analyze receptive-fields RUNS...`: neuron addresses as images.

Each row of the hidden layer's input weights (an SDM neuron's address) lives in input space,
so for image data it can be drawn as an image: a neuron that learned looks like the inputs
it responds to; a neuron that never activated still shows its random initialisation.

Reads the activation snapshots of runs made with `investigate.activations_every: N` (each
stores the address rows of the `investigate.receptive_fields` most and least used neurons,
ranked by how many training inputs of the seen tasks activate them) and draws, per run, the
most used neurons in the top rows and the least used below, each titled with its neuron index
and count. Non-negative addresses (SDMLP) are drawn in grey scale from 0 to the row's maximum,
signed ones (ReLU / Top-K MLPs) on a blue–red scale centred on 0. Files:
`receptive_fields_<run>.png`, `receptive_fields.csv` (which neurons, their counts and norms),
`receptive_fields_addresses.csv` (the address values drawn).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from sdmcl.analysis.common import find_runs, load_snapshot, pyplot, save_figure, table, write_csv
from sdmcl.analysis.neurons import pick_snapshot
from sdmcl.errors import UserError


def guess_image_shape(d: int) -> tuple[int, ...]:
    """(H, W) or (C, H, W) for an input of d values: square grey images, square RGB images
    (channels first), otherwise the most nearly square H × W."""
    s = math.isqrt(d)
    if s * s == d:
        return (s, s)
    if d % 3 == 0 and math.isqrt(d // 3) ** 2 == d // 3:
        s = math.isqrt(d // 3)
        return (3, s, s)
    h = max(f for f in range(1, s + 1) if d % f == 0)
    return (h, d // h)


def as_image(row: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    img = row.reshape(shape)
    if len(shape) == 3:  # channels first → H × W × C, scaled to [0, 1] for display
        img = np.moveaxis(img, 0, -1)
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img


def analyze(run_args: list[str], out: Path, epoch: int | None = None, neurons: int = 16,
            image_shape: tuple[int, ...] | None = None, **_) -> str:
    runs = find_runs(run_args, "receptive-fields")
    if neurons < 1:
        raise UserError(f"--neurons {neurons}: show at least 1 neuron per group")
    rows, value_rows, files, summary = [], [], [], []
    chosen = []
    for run in runs:  # every run checked before anything is written
        path = pick_snapshot(run, epoch)
        snap = load_snapshot(path)
        if "most_used" not in snap:
            raise UserError(f"{path}: no address rows in this snapshot; the run had investigate.receptive_fields=0")
        d = snap["most_used_addresses"].shape[1]
        shape = tuple(image_shape) if image_shape else guess_image_shape(d)
        if int(np.prod(shape)) != d:
            raise UserError(f"--image-shape {'x'.join(map(str, shape))}: {int(np.prod(shape))} values, but the addresses have {d}")
        chosen.append((run, snap, shape))
    out.mkdir(parents=True, exist_ok=True)
    for run, snap, shape in chosen:
        counts = np.asarray(snap["train_counts"]).sum(0)
        groups = []
        for group in ("most_used", "least_used"):
            idx = np.asarray(snap[group])[:neurons]
            W = np.asarray(snap[f"{group}_addresses"])[:neurons]
            groups.append((group, idx, W))
            for rank, (i, w) in enumerate(zip(idx, W)):
                rows.append([run.label, int(snap["epoch"]), group, rank, int(i), int(counts[i]), float(np.linalg.norm(w)),
                             float(w.min()), float(w.max())])
                value_rows.append([run.label, group, rank, int(i)] + [float(v) for v in w])
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run.label).strip("_") or "run"
        files.append(plot(run.label, int(snap["epoch"]), groups, counts, shape, out / f"receptive_fields_{safe}.png"))
        dead = int((counts == 0).sum())
        summary.append([run.label, int(snap["epoch"]), int(counts[groups[0][1][0]]) if len(groups[0][1]) else 0, dead, len(counts)])
    files.insert(0, write_csv(out / "receptive_fields.csv", ["run", "epoch", "group", "rank", "neuron", "train_count", "address_norm",
                                                             "address_min", "address_max"], rows))
    d = max((len(r) - 4 for r in value_rows), default=0)
    files.insert(1, write_csv(out / "receptive_fields_addresses.csv", ["run", "group", "rank", "neuron"] + [f"v{j}" for j in range(d)],
                              value_rows))
    text = table(["run", "epoch", "count of the most used neuron", "neurons never active at this snapshot", "neurons"], summary)
    return text + "\n\nwrote " + ", ".join(str(p) for p in files)


def plot(label: str, epoch: int, groups, counts, shape, path: Path) -> Path:
    plt = pyplot()
    blocks = [(g, idx, W) for g, idx, W in groups if len(idx)]
    per_row = min(8, max(len(idx) for _, idx, _ in blocks))
    n_rows = sum(math.ceil(len(idx) / per_row) for _, idx, _ in blocks)
    fig, axes = plt.subplots(n_rows, per_row, figsize=(1.45 * per_row, 1.65 * n_rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    r = 0
    for group, idx, W in blocks:
        for j, (i, w) in enumerate(zip(idx, W)):
            ax = axes[r + j // per_row][j % per_row]
            img = as_image(w, shape)
            if img.ndim == 3:
                ax.imshow(img)
            elif w.min() >= 0:
                ax.imshow(img, cmap="gray", vmin=0, vmax=max(float(w.max()), 1e-12))
            else:
                v = max(float(np.abs(w).max()), 1e-12)
                ax.imshow(img, cmap="RdBu_r", vmin=-v, vmax=v)
            ax.set_title(f"{'most' if group == 'most_used' else 'least'} #{j + 1}\nn{i}: {counts[i]}", fontsize=6.5)
        r += math.ceil(len(idx) / per_row)
    fig.suptitle(f"{label}, epoch {epoch}: addresses of the most used (top) and least used (bottom) neurons\n"
                 "(title: neuron index and how many training inputs of the seen tasks activate it)", fontsize=9)
    return save_figure(fig, path)

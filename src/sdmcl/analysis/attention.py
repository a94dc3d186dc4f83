"""`sdmcl analyze attention RUNS...`: Top-K and ReLU activations as SDM's read weighting.

Sparse Distributed Memory reads a query by the neurons whose addresses lie within a Hamming
radius r of it; a stored pattern then contributes in proportion to the number of neurons
its write and the query's read share — the intersection of two Hamming balls, which decays
approximately exponentially with the distance between pattern and query (Bricken &
Pehlevan 2021: attention's softmax(β·similarity) approximates it). The paper argues that a
Top-K layer (and, more loosely, ReLU) implements this weighting with cosine similarity.

For each finished run (its `model.pt`, evaluated on its own data set):
- neuron perspective: for test inputs q and every neuron i, the activation weight
  a_i(q) / Σ_j a_j(q) (the share of the read that neuron i carries) against the cosine
  similarity of the input (as the layer sees it, e.g. L2-normalised) and the neuron's
  address; the fraction of neurons active at each similarity;
- pattern perspective: for test queries q and training inputs p, the weight with which p's
  write is read by q, a(q)·a(p) normalised over p, against cos(q, p);
- in both, the fitted exponential w ∝ exp(β·cos) (least squares on ln of the binned means,
  as the reference's fit does) with its R², and SDM's weighting for comparison: for the
  neurons, a neuron is read (weight 1) within the Hamming radius and not beyond; for the
  patterns, the size of the intersection of two radius-r balls in {0,1}^n whose centres are
  d = n(1 − cos)/2 apart. n = 64 (the setting of the reference notebooks) and r such that
  the fraction of the space within r equals the measured fraction of neurons active per
  input (k/N for Top-K).
Files: `attention.png`, `attention_neurons.csv`, `attention_patterns.csv`, `attention_fit.csv`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from sdmcl.analysis.common import Run, find_runs, pyplot, save_figure, table, write_csv
from sdmcl.errors import UserError

SDM_N = 64
BIN = 0.02
MIN_BIN_COUNT = 20


# ---------------------------------------------------------------- SDM geometry (exact integers)


def hamming_radius(n: int, fraction: float) -> int:
    """Smallest r such that a Hamming ball of radius r holds at least `fraction` of {0,1}^n."""
    total, acc = 2**n, 0
    for r in range(n + 1):
        acc += math.comb(n, r)
        if acc >= fraction * total:
            return r
    return n


def circle_intersection(n: int, r: int, d: int) -> int:
    """Number of points of {0,1}^n within Hamming distance r of both of two points that are d apart.

    A point differing from the first centre in i of the d coordinates where the centres
    differ, and in j of the n − d where they agree, is i + j from the first centre and
    d − i + j from the second."""
    m = n - d
    prefix = [0]
    for j in range(m + 1):
        prefix.append(prefix[-1] + math.comb(m, j))
    total = 0
    for i in range(d + 1):
        J = min(r - i, r - d + i, m)
        if J >= 0:
            total += math.comb(d, i) * prefix[J + 1]
    return total


def sdm_pattern_weight(cos: np.ndarray, n: int, r: int) -> np.ndarray:
    """Circle intersection at Hamming distance round(n(1 − cos)/2), normalised to 1 at cos = 1."""
    top = circle_intersection(n, r, 0)
    d = np.clip(np.rint(n * (1 - np.asarray(cos)) / 2).astype(int), 0, n)
    cache = {int(v): circle_intersection(n, r, int(v)) / top for v in np.unique(d)}
    return np.array([cache[int(v)] for v in d])


def fit_exponential(x, y) -> tuple[float, float, float]:
    """ln y = b + β x by least squares over the points with y > 0: (β, b, R² in log space)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    m = (y > 0) & np.isfinite(y)
    if m.sum() < 3:
        return math.nan, math.nan, math.nan
    lx, ly = x[m], np.log(y[m])
    beta, b = np.polyfit(lx, ly, 1)
    resid = ly - (b + beta * lx)
    ss = ((ly - ly.mean()) ** 2).sum()
    return float(beta), float(b), float(1 - (resid**2).sum() / ss) if ss > 0 else math.nan


def binned(x: np.ndarray, y: np.ndarray, width: float = BIN) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bin centres, counts, mean of y and fraction of y > 0 per bin of x."""
    idx = np.floor(x / width).astype(np.int64)
    keys, inv, counts = np.unique(idx, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=y)
    pos = np.bincount(inv, weights=(y > 0).astype(float))
    return (keys + 0.5) * width, counts, sums / counts, pos / counts


# ---------------------------------------------------------------- the trained model


def load_model_and_data(run: Run):
    """The run's final model (from model.pt) and its data set, loaded as the run loaded them."""
    from sdmcl.config import parse_config
    from sdmcl.data.sources import load_dataset
    from sdmcl.train.checkpoint import load_checkpoint, load_model

    if not (run.path / "model.pt").is_file():
        raise UserError(f"{run.path}: no model.pt (unfinished run); attention reads the final model — finish the run first")
    cfg = parse_config(run.config)
    ckpt = load_checkpoint(run.path / "model.pt")
    model = load_model(run.path / "model.pt")
    if hasattr(model, "on_epoch_start"):  # k schedules: the k of the run's last epoch
        epochs = ckpt.get("epochs_trained", (run.summary or {}).get("epochs"))
        if epochs is None:
            raise UserError(f"{run.path}: cannot tell how many epochs the model was trained (no summary.json); finish the run first")
        model.on_epoch_start(int(epochs) - 1)
    model.eval()
    if not hasattr(model, "forward_with_hidden"):
        raise UserError(f"{run.path}: model {cfg.model.name!r} does not expose hidden activations")
    d = cfg.data
    data = load_dataset(d.source, path=d.path, data_dir=d.data_dir, pixel_scale=d.pixel_scale, download=d.download)
    return cfg, model, data


def address_matrix(model) -> torch.Tensor:
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            return m.weight.detach()
    raise UserError("the model has no linear hidden layer to read addresses from")


@torch.no_grad()
def measure(run: Run, samples: int, patterns: int = 2000) -> dict:
    cfg, model, data = load_model_and_data(run)
    rng = np.random.default_rng(0)
    q_idx = rng.permutation(len(data.test_y))[:samples]
    p_idx = rng.permutation(len(data.train_y))[:patterns]
    xq = torch.as_tensor(data.test_x[q_idx]).reshape(len(q_idx), -1)
    xp = torch.as_tensor(data.train_x[p_idx]).reshape(len(p_idx), -1)
    prep = getattr(model, "prepare_inputs", None)
    kw = {}
    if prep is not None:
        xq, xp, kw = prep(xq), prep(xp), {"prepared": True}
    _, hq = model.forward_with_hidden(xq, **kw)
    _, hp = model.forward_with_hidden(xp, **kw)
    W = address_matrix(model)
    unit = lambda v: v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)  # noqa: E731
    cos_neuron = (unit(xq) @ unit(W).T).numpy().ravel()
    hq_pos = hq.clamp_min(0)
    w_neuron = (hq_pos / hq_pos.sum(1, keepdim=True).clamp_min(1e-12)).numpy().ravel()
    overlap = hq_pos @ hp.clamp_min(0).T
    w_pattern = (overlap / overlap.sum(1, keepdim=True).clamp_min(1e-12)).numpy().ravel()
    cos_pattern = (unit(xq) @ unit(xp).T).numpy().ravel()
    active_fraction = float((hq > 0).float().mean())
    return {"cfg": cfg, "cos_neuron": cos_neuron, "w_neuron": w_neuron, "cos_pattern": cos_pattern, "w_pattern": w_pattern,
            "active_fraction": active_fraction, "neurons": hq.shape[1]}


def analyze(run_args: list[str], out: Path, samples: int = 500, **_) -> str:
    runs = find_runs(run_args, "attention")
    if samples < 10:
        raise UserError(f"--samples {samples}: use at least 10 test inputs")
    neuron_rows, pattern_rows, fit_rows, panels = [], [], [], []
    for run in runs:
        m = measure(run, samples)
        p_active = max(m["active_fraction"], 1.0 / 2**SDM_N)
        r = hamming_radius(SDM_N, p_active)
        cn, nn_count, nw, nfrac = binned(m["cos_neuron"], m["w_neuron"])
        cp, np_count, pw, _ = binned(m["cos_pattern"], m["w_pattern"])
        keep_n, keep_p = nn_count >= MIN_BIN_COUNT, np_count >= MIN_BIN_COUNT
        beta_n, b_n, r2_n = fit_exponential(cn[keep_n], nw[keep_n])
        beta_p, b_p, r2_p = fit_exponential(cp[keep_p], pw[keep_p])
        sdm = sdm_pattern_weight(cp[keep_p], SDM_N, r)
        beta_s, _, r2_s = fit_exponential(cp[keep_p], sdm)
        for c, k, w, f in zip(cn, nn_count, nw, nfrac):
            neuron_rows.append([run.label, c, k, w, f])
        for c, k, w in zip(cp, np_count, pw):
            pattern_rows.append([run.label, c, k, w, sdm_pattern_weight(np.array([c]), SDM_N, r)[0]])
        fit_rows.append([run.label, run.get("model.name"), m["active_fraction"], m["active_fraction"] * m["neurons"], SDM_N, r,
                         beta_n, r2_n, beta_p, r2_p, beta_s, r2_s])
        panels.append((run, (cn[keep_n], nw[keep_n], nfrac[keep_n], beta_n, b_n, r2_n),
                       (cp[keep_p], pw[keep_p], beta_p, b_p, r2_p, sdm, beta_s), r, m["active_fraction"]))
    out.mkdir(parents=True, exist_ok=True)
    files = [
        write_csv(out / "attention_neurons.csv", ["run", "cos_bin_centre", "pairs", "mean_activation_weight", "fraction_active"], neuron_rows),
        write_csv(out / "attention_patterns.csv", ["run", "cos_bin_centre", "pairs", "mean_pattern_weight", "sdm_intersection_weight"], pattern_rows),
        write_csv(out / "attention_fit.csv", ["run", "model", "active_fraction", "active_per_input", "sdm_n", "sdm_radius",
                                              "neuron_beta", "neuron_r2", "pattern_beta", "pattern_r2", "sdm_beta", "sdm_r2"], fit_rows),
        plot(panels, out),
    ]
    text = table(["run", "active/input", "neuron β", "R²", "pattern β", "R²", f"SDM β (n={SDM_N}, r)", "R²"],
                 [[f[0], f"{f[3]:.1f}", f"{f[6]:.1f}", f"{f[7]:.3f}", f"{f[8]:.1f}", f"{f[9]:.3f}", f"{f[10]:.1f} (r={f[5]})", f"{f[11]:.3f}"]
                  for f in fit_rows])
    return text + "\n\nwrote " + ", ".join(str(p) for p in files)


def plot(panels, out: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 4.0 * len(panels)), squeeze=False,
                             gridspec_kw={"wspace": 0.42, "hspace": 0.4})
    for row, (run, neu, pat, r, p_active) in zip(axes, panels):
        c, w, frac, beta, b, r2 = neu
        ax = row[0]
        ax.plot(c, w, "o", ms=3, color="tab:blue", label="mean activation weight a_i / Σa")
        if np.isfinite(beta):
            ax.plot(c, np.exp(b + beta * c), color="crimson", lw=1.2, label=f"exp fit: β = {beta:.1f}, R² = {r2:.2f}")
        ax.set_yscale("log")
        ax.set_xlabel("cosine similarity of input and neuron address")
        ax.set_ylabel("activation weight")
        ax2 = ax.twinx()
        ax2.plot(c, frac, color="grey", lw=1, ls="--", label="fraction of neurons active")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("fraction active", fontsize=8)
        # SDM: a neuron is read within the Hamming radius r of n bits, i.e. cos >= 1 - 2r/n
        ax.axvline(1 - 2 * r / SDM_N, color="black", lw=0.8, ls=":", label=f"SDM radius (n={SDM_N}, r={r}) as cos")
        ax.set_title(f"{run.label}: neuron perspective ({100 * p_active:.2f}% of neurons active)", fontsize=9)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
        c, w, beta, b, r2, sdm, beta_s = pat
        ax = row[1]
        if len(w) and w.max() > 0:
            top = w.max()
            ax.plot(c, w / top, "o", ms=3, color="tab:blue", label="mean pattern weight (÷ its max)")
            if np.isfinite(beta):
                ax.plot(c, np.exp(b + beta * c) / top, color="crimson", lw=1.2, label=f"exp fit: β = {beta:.1f}, R² = {r2:.2f}")
        ax.plot(c, np.maximum(sdm, 1e-30), color="black", lw=1.2, ls="--", label=f"SDM circle intersection (n={SDM_N}, r={r}), β = {beta_s:.1f}")
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(1e-8, ax.get_ylim()[0]))
        ax.set_xlabel("cosine similarity of query and stored pattern")
        ax.set_ylabel("read weight (normalised)")
        ax.set_title(f"{run.label}: pattern perspective", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    return save_figure(fig, out / "attention.png")

"""`sdmcl analyze stale-momentum [RUNS...]`: how optimizers move neurons that are silent.

A neuron that is inactive for a batch gets a zero gradient. Plain SGD then leaves it where
it is; optimizers with state keep moving it ("stale momentum"), or give it an outsized step
when it becomes active again, which can push a sparse network's neurons into being dead.

Toy model (no runs needed): one weight of one neuron under the real `torch.optim`
optimizers (SGD, SGD with momentum 0.9, Adam, RMSProp; torch's defaults otherwise, as the
runs use them). The neuron gets gradient g at its first `active_steps` steps, then zero
for `silence` steps, then g again when it is re-activated. Updates are shown per unit of
learning rate (for every optimizer the step is lr × a function of the gradients), so
optimizers are compared at equal lr — the reference notebook's comparison — and, in a
second figure, at the paper's learning rates (SGD 0.05, SGDM 0.03, Adam 0.001, RMSProp 0.0005).
For each silence length: `stale_movement`, the summed |update| while silent, and
`reactivation_update`, the update at re-activation, both per unit lr, and their ratio to
the plain-SGD step lr·g.

Inside runs (RUNS made with `investigate.update_norms: true`): the mean update norm of the
address rows of neurons inactive in the batch, relative to the active ones, and its decay
with the number of steps since the neuron was last active.

Files: `stale_momentum_toy.png` / `.csv` (updates per step), `stale_momentum_silence.png` /
`.csv` (measures against silence length), and with runs `stale_momentum_runs.png`,
`stale_momentum_runs.csv`, `stale_momentum_runs_by_silence.csv` and
`stale_momentum_by_optimizer.csv` (runs of one optimizer and learning rate, e.g. seeds:
mean ± s.e.m.).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from sdmcl.analysis.common import Run, find_runs, load_snapshot, mean_sem, pyplot, save_figure, table, write_csv
from sdmcl.errors import UserError

OPTIMIZERS = ("sgd", "sgdm", "adam", "rmsprop")
PAPER_LR = {"sgd": 0.05, "sgdm": 0.03, "adam": 0.001, "rmsprop": 0.0005}
COLORS = {"sgd": "black", "sgdm": "tab:blue", "adam": "tab:orange", "rmsprop": "tab:green"}


def make_optimizer(name: str, params, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sgdm":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def toy_updates(name: str, grads, lr: float = 1.0) -> np.ndarray:
    """The update −Δw at every step of a weight given its gradient at every step (0 = the
    neuron is silent), under optimizer `name` with learning rate `lr`. `grads` is a vector
    (one weight) or steps × weights (independent weights: every optimizer here acts on each
    coordinate separately)."""
    g_all = torch.as_tensor(np.asarray(grads, dtype=np.float64))
    one = g_all.ndim == 1
    g_all = g_all[:, None] if one else g_all
    w = torch.zeros(g_all.shape[1], dtype=torch.float64, requires_grad=True)
    opt = make_optimizer(name, [w], lr)
    out = []
    for g in g_all:
        w.grad = g.clone()  # a silent neuron's gradient is an exact zero
        before = w.detach().clone()
        opt.step()
        out.append((before - w.detach()).numpy())
    u = np.stack(out)
    return u[:, 0] if one else u


def silence_schedule(g: float, active_steps: int, silence: int, tail: int = 0) -> np.ndarray:
    """g for `active_steps` steps, 0 for `silence` steps, g once (re-activation), then `tail` zeros."""
    return np.array([g] * active_steps + [0.0] * silence + [g] + [0.0] * tail)


def silence_measures(name: str, g: float, active_steps: int, silence: int) -> tuple[float, float]:
    """(summed |update| while silent, update at re-activation), per unit learning rate."""
    return silence_sweep(name, g, active_steps, [silence])[0]


def silence_sweep(name: str, g: float, active_steps: int, lengths: list[int]) -> list[tuple[float, float]]:
    """`silence_measures` for several silence lengths at once (one independent weight each)."""
    steps = active_steps + max(lengths) + 1
    grads = np.zeros((steps, len(lengths)))
    grads[:active_steps] = g
    for j, s in enumerate(lengths):
        grads[active_steps + s, j] = g
    u = toy_updates(name, grads)
    return [(float(np.abs(u[active_steps : active_steps + s, j]).sum()), float(u[active_steps + s, j])) for j, s in enumerate(lengths)]


def analyze(run_args: list[str], out: Path, g: float = 0.2, active_steps: int = 2, reactivate_at: int = 50,
            steps: int = 100, max_silence: int = 100, **_) -> str:
    runs = find_runs(run_args, "stale-momentum", required=False)
    for run in runs:  # before anything is written
        if not (run.investigations / "update_norms.csv").is_file():
            raise UserError(f"{run.path}: no update norms; run it with investigate.update_norms=true")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    # --- the toy model: one trace (the reference notebook's setting) and the sweep over silence
    silence = reactivate_at - active_steps
    grads = silence_schedule(g, active_steps, silence, tail=steps - reactivate_at - 1)
    traces = {n: toy_updates(n, grads) for n in OPTIMIZERS}
    written.append(write_csv(out / "stale_momentum_toy.csv", ["step", "gradient"] + [f"{n}_update_per_lr" for n in OPTIMIZERS]
                             + [f"{n}_update_at_paper_lr" for n in OPTIMIZERS],
                             [[t, grads[t]] + [traces[n][t] for n in OPTIMIZERS] + [PAPER_LR[n] * traces[n][t] for n in OPTIMIZERS]
                              for t in range(len(grads))]))
    lengths = list(range(1, max_silence + 1))
    sweep = {n: silence_sweep(n, g, active_steps, lengths) for n in OPTIMIZERS}
    rows = []
    for i, s in enumerate(lengths):
        row = [s]
        for n in OPTIMIZERS:
            stale, react = sweep[n][i]
            row += [stale, react, react / g]
        rows.append(row)
    written.append(write_csv(out / "stale_momentum_silence.csv",
                             ["silent_steps"] + [f"{n}_{m}" for n in OPTIMIZERS for m in ("stale_movement_per_lr", "reactivation_update_per_lr",
                                                                                          "reactivation_over_sgd")], rows))
    written += plot_toy(traces, grads, sweep, lengths, g, active_steps, reactivate_at, out)

    at = min(reactivate_at - active_steps, max_silence) - 1
    lines = [f"toy model: gradient {g} for {active_steps} steps, silent, re-activated at step {reactivate_at} (updates per unit lr)",
             table(["optimizer", "moved while silent", "update at re-activation", "× the SGD step", "paper lr", "re-activation at paper lr"],
                   [[n, f"{sweep[n][at][0]:.3f}", f"{sweep[n][at][1]:.3f}", f"{sweep[n][at][1] / g:.2f}", f"{PAPER_LR[n]:g}",
                     f"{PAPER_LR[n] * sweep[n][at][1]:.2e}"] for n in OPTIMIZERS])]
    if runs:
        text, files = analyze_runs(runs, out)
        lines.append("\ninside runs (address-row update norms per step):\n" + text)
        written += files
    return "\n".join(lines) + "\n\nwrote " + ", ".join(str(p) for p in written)


def plot_toy(traces, grads, sweep, lengths, g, active_steps, reactivate_at, out: Path) -> list[Path]:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, scale, title in ((axes[0], None, "per unit learning rate (equal lr)"), (axes[1], PAPER_LR, "at the paper's learning rates")):
        for n in OPTIMIZERS:
            u = traces[n] * (scale[n] if scale else 1.0)
            ax.plot(np.arange(len(u)), u, marker="o", ms=2.5, lw=0.8, color=COLORS[n], label=n)
        ax.set_yscale("symlog", linthresh=1e-3 if scale is None else 1e-5)
        ax.set_xlabel("step")
        ax.set_ylabel("update −Δw" + (" / lr" if scale is None else ""))
        ax.set_title(f"One weight: gradient {g} at steps 0–{active_steps - 1} and {reactivate_at}, zero between\n{title}", fontsize=9)
        ax.legend(fontsize=8)
    paths = [save_figure(fig, out / "stale_momentum_toy.png")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for n in OPTIMIZERS:
        axes[0].plot(lengths, [m[0] / g for m in sweep[n]], color=COLORS[n], lw=1.8, label=n)
        axes[1].plot(lengths, [m[1] / g for m in sweep[n]], color=COLORS[n], lw=1.8, label=n)
    axes[0].set_title("Movement while silent, in plain-SGD steps (lr·g)", fontsize=9)
    axes[1].set_title("Update at re-activation, in plain-SGD steps (lr·g)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("silent steps before re-activation")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.legend(fontsize=8)
    return paths + [save_figure(fig, out / "stale_momentum_silence.png")]


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError as e:
        raise UserError(f"{path}: unreadable ({e.strerror or e})") from None


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def analyze_runs(runs: list[Run], out: Path) -> tuple[str, list[Path]]:
    rows, silence_rows, per_run = [], [], []
    for run in runs:
        steps_path = run.investigations / "update_norms.csv"
        if not steps_path.is_file():
            raise UserError(f"{run.path}: no update norms; run it with investigate.update_norms=true")
        steps = _read_csv(steps_path)
        if not steps:
            raise UserError(f"{steps_path}: no measured steps yet")
        act = np.array([_float(r["mean_norm_active"]) for r in steps])
        ina = np.array([_float(r["mean_norm_inactive"]) for r in steps])
        n_ina = np.array([_float(r["inactive"]) for r in steps])
        moved = np.array([_float(r["inactive_moved"]) for r in steps])
        react = np.array([_float(r["mean_norm_reactivated"]) for r in steps])
        epochs = np.array([int(r["epoch"]) for r in steps])
        # step means weighted by the neurons in each group
        n_act = np.array([_float(r["active"]) for r in steps])
        mean_act = np.nansum(act * n_act) / max(np.nansum(np.where(np.isnan(act), 0, n_act)), 1)
        mean_ina = np.nansum(ina * n_ina) / max(np.nansum(np.where(np.isnan(ina), 0, n_ina)), 1)
        frac_moved = np.nansum(moved) / max(np.nansum(n_ina), 1)
        n_re = np.array([_float(r["reactivated"]) for r in steps])
        mean_re = np.nansum(react * n_re) / max(np.nansum(np.where(np.isnan(react), 0, n_re)), 1)
        by_silence = {}
        sp = run.investigations / "update_norms_by_silence.csv"
        for r in _read_csv(sp) if sp.is_file() else []:
            key = (r["group"], int(r["silence_min"]), int(r["silence_max"]))
            acc = by_silence.setdefault(key, [0, 0.0, 0.0])
            c = int(r["count"])
            acc[0] += c
            acc[1] += c * _float(r["mean_norm"])
            acc[2] = max(acc[2], _float(r["max_norm"]))
        for (group, lo, hi), (c, tot, mx) in sorted(by_silence.items()):
            silence_rows.append([run.label, run.get("optim.name"), group, lo, hi, c, tot / c if c else None, mx,
                                 (tot / c) / mean_act if c and mean_act > 0 else None])
        s = run.summary or {}
        snaps = run.snapshot_paths()
        alive = None
        if snaps:  # neurons active for some training input of the seen tasks, with the last snapshot's weights
            alive = float((np.asarray(load_snapshot(snaps[-1])["train_counts"]).sum(0) > 0).mean())
        rows.append([run.label, run.get("optim.name"), run.get("optim.lr"), len(steps), mean_act, mean_ina,
                     mean_ina / mean_act if mean_act > 0 else None, frac_moved, mean_re / mean_act if mean_act > 0 else None,
                     s.get("fraction_dead"), alive, s.get("final_average_accuracy")])
        per_run.append((run, epochs, act, ina, by_silence, mean_act))
    files = [write_csv(out / "stale_momentum_runs.csv", ["run", "optimizer", "lr", "measured_steps", "mean_norm_active", "mean_norm_inactive",
                                                         "inactive_over_active", "inactive_rows_moved", "reactivated_over_active",
                                                         "fraction_dead_final", "alive_last_snapshot", "final_average_accuracy"], rows),
             write_csv(out / "stale_momentum_runs_by_silence.csv", ["run", "optimizer", "group", "silence_min", "silence_max", "count",
                                                                    "mean_norm", "max_norm", "mean_norm_over_active"], silence_rows)]
    files.append(plot_runs(per_run, out))
    # runs of the same optimizer and learning rate (seeds): mean ± s.e.m.
    groups: dict[tuple, list[list]] = {}
    for r in rows:
        groups.setdefault((r[1], r[2]), []).append(r)
    keys = ("inactive_over_active", "inactive_rows_moved", "reactivated_over_active", "fraction_dead_final", "alive_last_snapshot",
            "final_average_accuracy")
    agg = []
    for (opt, lr), rs in groups.items():
        row = [opt, lr, len(rs)]
        for j in (6, 7, 8, 9, 10, 11):
            vals = [r[j] for r in rs if r[j] is not None]
            row += list(mean_sem(vals)) if vals else [None, None]
        agg.append(row)
    files.append(write_csv(out / "stale_momentum_by_optimizer.csv", ["optimizer", "lr", "runs"] + [f"{k}{suffix}" for k in keys
                                                                                                   for suffix in ("", "_sem")], agg))
    pct = lambda v: f"{100 * v:.1f}%" if v is not None else ""  # noqa: E731
    text = table(["run", "optimizer", "lr", "|Δ| active", "|Δ| inactive", "inactive/active", "inactive rows moved", "re-activated/active",
                  "dead (last window)", "alive (last snapshot)", "final acc"],
                 [[r[0], r[1], f"{r[2]:g}", f"{r[4]:.2e}", f"{r[5]:.2e}", f"{r[6]:.3f}" if r[6] is not None else "",
                   pct(r[7]), f"{r[8]:.2f}" if r[8] is not None else "", pct(r[9]), pct(r[10]), pct(r[11])] for r in rows])
    if any(a[2] > 1 for a in agg):
        pm = lambda m, e, scale=100, unit="%": "" if m is None else f"{scale * m:.{1 if scale == 100 else 3}f} ± {scale * e:.{1 if scale == 100 else 3}f}{unit}"  # noqa: E731
        text += "\n\nby optimizer (mean ± s.e.m. over runs):\n" + table(
            ["optimizer", "lr", "runs", "inactive/active", "inactive rows moved", "re-activated/active", "dead (last window)",
             "alive (last snapshot)", "final acc"],
            [[a[0], f"{a[1]:g}", a[2], pm(a[3], a[4], 1, ""), pm(a[5], a[6]), pm(a[7], a[8], 1, ""), pm(a[9], a[10]), pm(a[11], a[12]),
              pm(a[13], a[14])] for a in agg])
    return text, files


def plot_runs(per_run, out: Path) -> Path:
    plt = pyplot()
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for i, (run, epochs, act, ina, by_silence, mean_act) in enumerate(per_run):
        c = cmap(i % 10)
        ep = np.unique(epochs)
        ratio = []
        for e in ep:
            m = epochs == e
            a, b = np.nanmean(act[m]) if np.isfinite(act[m]).any() else np.nan, np.nanmean(ina[m]) if np.isfinite(ina[m]).any() else np.nan
            ratio.append(b / a if a > 0 else np.nan)
        axes[0].plot(ep, ratio, color=c, lw=1.5, label=run.label)
        pts = sorted((lo, tot / cnt / mean_act) for (group, lo, hi), (cnt, tot, _) in by_silence.items()
                     if group == "inactive" and lo >= 1 and cnt and mean_act > 0)
        pts = [p for p in pts if p[1] > 0]  # exact zeros (plain SGD) have no place on a log axis
        if pts:
            axes[1].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=c, lw=1.5, label=run.label)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("mean |Δ address| inactive / active")
    axes[0].set_yscale("symlog", linthresh=1e-4)
    axes[0].set_title("Update size of neurons inactive in the batch, relative to active ones", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].set_xscale("log", base=2)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("steps since the neuron was last active (bin start)")
    axes[1].set_ylabel("mean |Δ address| / mean active |Δ|")
    axes[1].set_title("Inactive neurons' updates against the length of their silence\n(bins with only exact zeros are left out)", fontsize=9)
    axes[1].legend(fontsize=7)
    return save_figure(fig, out / "stale_momentum_runs.png")

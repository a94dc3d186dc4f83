"""`sdmcl analyze gaba-timing RUNS...`: when the GABA switch happens, and what it does.

The GABA switch threshold T (`model.gaba_switch_activations`) sets how many activations a
neuron needs before it is fully inhibited (exact Top-K). Too early, and neurons that have
not yet found data die before they are used; too late, and the network is dense through
the first tasks. The paper's ablation ran T from 10,000,000 down to 5,000.

Each finished run given is grouped by T (several seeds give mean ± s.e.m.). Per group:
final average accuracy; dead neurons at the end (`fraction_dead` in summary.json: neurons
inactive for every training input since the previous evaluation); neurons never active
(from activation snapshots, when the runs have them); the reference's dead-neuron
definition (summed activation below a threshold over the last training window) when
summary.json carries `fraction_dead_reference_train`; and how far the switch had come by
the end of the first task (`gaba_switched` and active neurons per input in metrics.jsonl).
Files: `gaba_timing.png`, `gaba_timing.csv`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sdmcl.analysis.common import find_runs, load_snapshot, mean_sem, pyplot, save_figure, table, write_csv
from sdmcl.errors import UserError


def end_of_first_task(metrics: list[dict]) -> dict:
    first = [m for m in metrics if m.get("task") == 0]
    return first[-1] if first else {}


def never_active(run) -> float | None:
    paths = run.snapshot_paths()
    if not paths:
        return None
    ever = None
    for p in paths:
        c = np.asarray(load_snapshot(p)["train_counts"]).sum(0) > 0
        ever = c if ever is None else ever | c
    return float(1 - ever.mean())


def analyze(run_args: list[str], out: Path, **_) -> str:
    runs = find_runs(run_args, "gaba-timing")
    groups: dict[int, dict[str, list]] = {}
    for run in runs:
        s = run.require_summary("gaba-timing")
        if run.get("model.k_approach") != "gaba_switch":
            raise UserError(f"{run.path}: k_approach is {run.get('model.k_approach')!r}; gaba-timing compares runs with k_approach gaba_switch")
        T = int(run.get("model.gaba_switch_activations"))
        g = groups.setdefault(T, {k: [] for k in ("acc", "dead", "never", "switched", "active", "dead_ref")})
        g["acc"].append(s["final_average_accuracy"])
        if s.get("fraction_dead") is not None:
            g["dead"].append(s["fraction_dead"])
        if s.get("fraction_dead_reference_train") is not None:  # written by versions that carry the reference's definition
            g["dead_ref"].append(s["fraction_dead_reference_train"])
        nv = never_active(run)
        if nv is not None:
            g["never"].append(nv)
        first = end_of_first_task(run.metrics())
        if first.get("gaba_switched") is not None:
            g["switched"].append(first["gaba_switched"])
        if first.get("active_per_input") is not None:
            g["active"].append(first["active_per_input"])
    rows = []
    for T in sorted(groups):
        g = groups[T]
        ms = {k: mean_sem(v) if v else (math.nan, math.nan) for k, v in g.items()}
        rows.append([T, len(g["acc"]), *ms["acc"], *ms["dead"], *ms["never"], ms["switched"][0], ms["active"][0], ms["dead_ref"][0]])
    out.mkdir(parents=True, exist_ok=True)
    files = [write_csv(out / "gaba_timing.csv", ["gaba_switch_activations", "runs", "final_average_accuracy", "accuracy_sem",
                                                 "fraction_dead_final", "dead_sem", "never_active", "never_active_sem",
                                                 "switched_after_task_1", "active_per_input_after_task_1",
                                                 "fraction_dead_reference_definition"], rows)]
    files.append(plot(rows, out))
    text = table(["T", "runs", "final acc", "dead (final)", "never active", "switched after task 1", "active/input after task 1"],
                 [[f"{r[0]:,}", r[1], _pm(r[2], r[3], r[1]), _pm(r[4], r[5], r[1]), _pm(r[6], r[7], r[1]), _pct(r[8]),
                   "" if math.isnan(r[9]) else f"{r[9]:.1f}"] for r in rows])
    return text + "\n\nwrote " + ", ".join(str(p) for p in files)


def _pm(m, e, n=2) -> str:
    if math.isnan(m):
        return ""
    return f"{100 * m:.1f}%" if n < 2 else f"{100 * m:.1f} ± {100 * e:.1f}%"


def _pct(v) -> str:
    return "" if math.isnan(v) else f"{100 * v:.0f}%"


def plot(rows, out: Path) -> Path:
    plt = pyplot()
    T = np.array([r[0] for r in rows], dtype=float)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    a1.errorbar(T, [100 * r[2] for r in rows], yerr=[100 * r[3] for r in rows], marker="o", capsize=3, color="tab:blue")
    a1.set_xscale("log")
    a1.set_xlabel("GABA switch threshold T (activations)")
    a1.set_ylabel("final average accuracy (%)")
    a1.set_title("Continual accuracy against the switch threshold", fontsize=9)
    for idx, err, label, color in ((4, 5, "dead at the end (last evaluation window)", "crimson"), (6, 7, "never active (snapshots)", "purple")):
        y = np.array([100 * r[idx] for r in rows])
        m = np.isfinite(y)
        if m.any():
            a2.errorbar(T[m], y[m], yerr=np.array([100 * r[err] for r in rows])[m], marker="o", capsize=3, color=color, label=label)
    act = np.array([r[9] for r in rows])
    if np.isfinite(act).any():  # has the switch completed within task 1? (k active once it has)
        a3 = a2.twinx()
        a3.plot(T[np.isfinite(act)], act[np.isfinite(act)], marker="s", ls="--", color="grey")
        a3.set_yscale("log")
        a3.set_ylabel("active neurons per input at the end of task 1 (grey, dashed)", fontsize=8)
    a2.set_xscale("log")
    a2.set_ylim(-2, 102)
    a2.set_xlabel("GABA switch threshold T (activations)")
    a2.set_ylabel("neurons (%)")
    a2.set_title("Dead neurons against the switch threshold", fontsize=9)
    a2.legend(fontsize=8, loc="center left")
    return save_figure(fig, out / "gaba_timing.png")

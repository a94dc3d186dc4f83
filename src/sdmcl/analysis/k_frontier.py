"""`sdmcl analyze k-frontier RUNS...`: what k trades — pretraining accuracy against continual accuracy.

The paper's k ablation: SDMLPs with different k pretrained on ImageNet32 embeddings (their
validation accuracy is the "pretraining" axis), then trained continually on Split CIFAR-10
from those weights (final average accuracy, the "continual" axis). Lower k gave lower
pretraining accuracy but higher continual accuracy (k = 1: 73.7%, k = 10: 61.0%, k = 250:
33.9% continual).

Each finished run given is placed by its `model.k` and its role:
- a continual run with `init_from`: its pretraining accuracy is that of the run whose
  `model.pt` it started from (the paper's protocol);
- a run with `benchmark.joint: true`: a pretraining run — one task holding every class, its
  accuracy is the i.i.d. accuracy of that k (the offline stand-in: how well this k learns
  the data when nothing is continual);
- any other run: a continual run at that k.
Runs are grouped by (model, k); several seeds give mean ± s.e.m. Files: `k_frontier.png`
(both accuracies against k, and continual against pretraining with k marked),
`k_frontier.csv`, and the direction (Spearman correlation of k with each accuracy).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sdmcl.analysis.common import Run, find_runs, mean_sem, pyplot, save_figure, spearman, table, write_csv
from sdmcl.errors import UserError


def pretrained_run_dir(init_from: str) -> Path:
    p = Path(init_from)
    return p if p.is_dir() else p.parent


def analyze(run_args: list[str], out: Path, **_) -> str:
    runs = find_runs(run_args, "k-frontier")
    groups: dict[tuple, dict[str, list[float]]] = {}
    for run in runs:
        s = run.require_summary("k-frontier")
        k = run.get("model.k")
        if k is None:
            raise UserError(f"{run.path}: model {run.get('model.name')!r} has no k; k-frontier needs Top-K models (sdmlp, topk_mlp)")
        g = groups.setdefault((run.get("model.name"), int(k)), {"pretrain": [], "continual": [], "runs": []})
        g["runs"].append(str(run.path))
        acc = s["final_average_accuracy"]
        if run.get("benchmark.joint"):
            g["pretrain"].append(acc)
            continue
        g["continual"].append(acc)
        init = run.get("init_from")
        if init:
            pre_dir = pretrained_run_dir(init)
            sp = pre_dir / "summary.json"
            if not sp.is_file():
                raise UserError(f"{run.path}: its init_from {init} is not in a finished run directory (no {sp}); "
                                "give the pretraining accuracy by adding the pretraining run instead")
            from sdmcl.train.rundir import read_summary

            g["pretrain"].append(read_summary(pre_dir)["final_average_accuracy"])
    rows = []
    for (model, k), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        pm, pe = mean_sem(g["pretrain"]) if g["pretrain"] else (math.nan, math.nan)
        cm, ce = mean_sem(g["continual"]) if g["continual"] else (math.nan, math.nan)
        rows.append([model, k, pm, pe, len(g["pretrain"]), cm, ce, len(g["continual"])])
    if not any(r[7] for r in rows):
        raise UserError("k-frontier: no continual runs among the runs given (runs with benchmark.joint are pretraining runs)")
    out.mkdir(parents=True, exist_ok=True)
    files = [write_csv(out / "k_frontier.csv", ["model", "k", "pretrain_accuracy", "pretrain_sem", "pretrain_runs",
                                                "continual_accuracy", "continual_sem", "continual_runs"], rows)]
    files.append(plot(rows, out))
    ks = [r[1] for r in rows]
    lines = [table(["model", "k", "pretraining acc", "runs", "continual acc", "runs"],
                   [[r[0], r[1], _pm(r[2], r[3], r[4]), r[4], _pm(r[5], r[6], r[7]), r[7]] for r in rows])]
    rho_c = spearman(ks, [r[5] for r in rows])
    rho_p = spearman(ks, [r[2] for r in rows])
    lines.append(f"direction: Spearman correlation of k with continual accuracy {rho_c:+.2f}, with pretraining accuracy {rho_p:+.2f} "
                 "(the paper: continual falls and pretraining rises as k grows)")
    return "\n".join(lines) + "\n\nwrote " + ", ".join(str(p) for p in files)


def _pm(m, e, n=2) -> str:
    if math.isnan(m):
        return ""
    return f"{100 * m:.1f}%" if n < 2 else f"{100 * m:.1f} ± {100 * e:.1f}%"


def plot(rows, out: Path) -> Path:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    models = sorted({r[0] for r in rows})
    for i, model in enumerate(models):
        rs = [r for r in rows if r[0] == model]
        k = np.array([r[1] for r in rs])
        suffix = f" ({model})" if len(models) > 1 else ""
        for idx, err, label, marker in ((2, 3, "pretraining (i.i.d.)", "s"), (5, 6, "continual", "o")):
            y = np.array([100 * r[idx] for r in rs])
            e = np.array([100 * r[err] for r in rs])
            m = np.isfinite(y)
            a1.errorbar(k[m], y[m], yerr=e[m], marker=marker, capsize=3, lw=1.2, label=label + suffix)
        pre = np.array([100 * r[2] for r in rs])
        con = np.array([100 * r[5] for r in rs])
        m = np.isfinite(pre) & np.isfinite(con)
        a2.plot(pre[m], con[m], marker="o", lw=1, label=model)
        for kk, x, y in zip(k[m], pre[m], con[m]):
            a2.annotate(f"k={kk}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    a1.set_xscale("log")
    a1.set_xlabel("k (active neurons)")
    a1.set_ylabel("accuracy (%)")
    a1.set_title("Accuracy against k", fontsize=9)
    a1.legend(fontsize=8)
    a2.set_xlabel("pretraining (i.i.d.) accuracy (%)")
    a2.set_ylabel("continual final average accuracy (%)")
    a2.set_title("The frontier: continual against pretraining accuracy", fontsize=9)
    return save_figure(fig, out / "k_frontier.png")

"""`sdmcl analyze neurons RUNS...`: dead and alive neurons over time, and how class-specific
each neuron is, for several runs side by side.

Reads the activation snapshots of runs made with `investigate.activations_every: N`. For every
snapshot (epoch) and run:

- alive fraction: neurons active for at least one input of the split (seen tasks' training
  or test data) with the weights of that epoch;
- ever alive: neurons active for at least one training input in any snapshot so far; and
  from the end of task 1 on (once the k schedule or GABA switch of the experiment files has
  completed; from the start for runs with `init_from`) — the reference's cumulative "alive
  neurons" (its counter summed every neuron's activity over the continual run of a
  pretrained, already switched model and called a neuron alive once the sum was > 0);
- class entropy: for each neuron ever active in the snapshot, the entropy (nats) of its
  activity over the classes, averaged over those neurons (the reference notebook's
  statistic; 0 = one class, ln C = all classes equally); also weighted by each neuron's
  share of all activations.

Figures: `neurons_over_time.png` (alive fractions and mean class entropy over epochs),
`class_entropy.png` (histogram of class entropies at the chosen snapshot, one panel per
run), `activation_counts.png` (histogram of log10 of how many training inputs each neuron
was active for, summed over the snapshots from the end of task 1 — the notebook's figure). CSV: `neurons_over_time.csv`,
`neurons_summary.csv`, `class_entropy.csv` (one row per run and neuron).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sdmcl import metrics
from sdmcl.analysis.common import Run, find_runs, load_snapshot, pyplot, save_figure, table, write_csv
from sdmcl.errors import UserError


def snapshot_stats(snap: dict, split: str) -> dict:
    """Statistics of one split of one snapshot (counts are classes × neurons)."""
    counts = np.asarray(snap[f"{split}_counts"], dtype=np.int64)
    samples = np.asarray(snap[f"{split}_samples"], dtype=np.int64)
    seen = samples > 0
    per_neuron = counts.sum(0)
    neuron_class = counts[seen].T  # only the classes seen so far
    return {
        "samples": int(samples.sum()),
        "classes": int(seen.sum()),
        "alive_fraction": metrics.alive_fraction(per_neuron),
        "mean_class_entropy": metrics.mean_class_entropy(neuron_class),
        "weighted_class_entropy": metrics.mean_class_entropy(neuron_class, weighted=True),
        "active_per_input": float(per_neuron.sum()) / max(int(samples.sum()), 1),
    }


def pick_snapshot(run: Run, epoch: int | None) -> Path:
    paths = run.require_snapshots("neurons")
    if epoch is None:
        return paths[-1]
    for p in paths:
        if int(p.stem.split("_", 1)[1]) == epoch:
            return p
    have = ", ".join(p.stem.split("_", 1)[1].lstrip("0") or "0" for p in paths)
    raise UserError(f"{run.path}: no activation snapshot at epoch {epoch}; it has epochs {have}")


def settled_from(run: Run) -> int:
    """First epoch of the settled phase: the end of task 1 (the k schedules and GABA switches
    of the experiment files complete within it), or 0 for a run started from a pretrained
    model (`init_from`), whose switch completed in pretraining — the reference's setting."""
    if run.get("init_from"):
        return 0
    return int(run.get("train.epochs_per_task", 0) or 0)


def analyze(run_args: list[str], out: Path, epoch: int | None = None, **_) -> str:
    runs = find_runs(run_args, "neurons")
    over_time, summary, entropy_rows = [], [], []
    per_run = []  # (run, series, final entropies, settled counts, classes seen)
    for run in runs:
        paths = run.require_snapshots("neurons")
        final_path = pick_snapshot(run, epoch)
        since = settled_from(run)
        ever = settled = None  # active in any snapshot; active in any snapshot from `since` on
        settled_counts = None  # training counts summed over the snapshots from `since` on
        series = []
        final = None
        for p in paths:
            snap = load_snapshot(p)
            ep = int(snap["epoch"])
            per_neuron = np.asarray(snap["train_counts"]).sum(0).astype(np.int64)
            ever = per_neuron > 0 if ever is None else ever | (per_neuron > 0)
            if ep >= since:
                settled = per_neuron > 0 if settled is None else settled | (per_neuron > 0)
                settled_counts = per_neuron if settled_counts is None else settled_counts + per_neuron
            tr, te = snapshot_stats(snap, "train"), snapshot_stats(snap, "test")
            ever_alive = float(ever.mean())
            series.append((ep, int(snap["task"]), tr, te, ever_alive))
            for split, st in (("train", tr), ("test", te)):
                over_time.append([run.label, str(run.path), ep, int(snap["task"]), split, st["samples"], st["alive_fraction"],
                                  ever_alive if split == "train" else None, st["mean_class_entropy"],
                                  st["weighted_class_entropy"], st["active_per_input"]])
            if p == final_path:
                final = (snap, tr, te, ever_alive,
                         None if settled is None else float(settled.mean()), None if settled_counts is None else settled_counts.copy())
        snap, tr, te, ever_alive, settled_alive, counts_since = final
        counts = np.asarray(snap["train_counts"])
        seen = np.asarray(snap["train_samples"]) > 0
        ent = metrics.class_entropy(counts[seen].T)
        for i, (h, c) in enumerate(zip(ent, counts.sum(0))):
            entropy_rows.append([run.label, i, int(c), None if math.isnan(h) else float(h)])
        acc = run.summary.get("final_average_accuracy") if run.summary else None
        summary.append([run.label, str(run.path), run.get("model.name"), int(snap["epoch"]), tr["alive_fraction"], te["alive_fraction"],
                        ever_alive, since, settled_alive, tr["mean_class_entropy"], tr["weighted_class_entropy"],
                        math.log(int(seen.sum())) if seen.any() else None, tr["active_per_input"], acc])
        per_run.append((run, series, ent, counts_since, int(seen.sum()), since))

    out.mkdir(parents=True, exist_ok=True)
    written = [
        write_csv(out / "neurons_over_time.csv", ["run", "path", "epoch", "task", "split", "samples", "alive_fraction", "ever_alive",
                                                   "mean_class_entropy", "weighted_class_entropy", "active_per_input"], over_time),
        write_csv(out / "neurons_summary.csv", ["run", "path", "model", "epoch", "alive_train", "alive_test", "ever_alive",
                                                "settled_from_epoch", "ever_alive_settled", "mean_class_entropy", "weighted_class_entropy",
                                                "max_entropy_ln_classes", "active_per_input", "final_average_accuracy"], summary),
        write_csv(out / "class_entropy.csv", ["run", "neuron", "train_count", "class_entropy"], entropy_rows),
    ]
    written += plot(per_run, out)
    text = table(["run", "epoch", "alive (train)", "alive (test)", "ever alive", "ever alive from epoch", "class entropy", "weighted",
                  "active/input", "final acc"],
                 [[s[0], s[3], _pct(s[4]), _pct(s[5]), _pct(s[6]), f"{_pct(s[8])} ({s[7]})", _num(s[9]), _num(s[10]), _num(s[12], 1),
                   _pct(s[13])] for s in summary])
    return text + "\n\nwrote " + ", ".join(str(p) for p in written)


def _pct(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _num(v, digits=3) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def plot(per_run, out: Path) -> list[Path]:
    plt = pyplot()
    cmap = plt.get_cmap("tab10")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (run, series, *_) in enumerate(per_run):
        c = cmap(i % 10)
        ep = [s[0] for s in series]
        a1.plot(ep, [100 * s[2]["alive_fraction"] for s in series], color=c, lw=1.6, marker="o", ms=2.5, label=f"{run.label}")
        a1.plot(ep, [100 * s[4] for s in series], color=c, lw=1.0, ls="--")
        a1.plot(ep, [100 * s[3]["alive_fraction"] for s in series], color=c, lw=1.0, ls=":")
        a2.plot(ep, [s[2]["mean_class_entropy"] for s in series], color=c, lw=1.6, marker="o", ms=2.5, label=run.label)
    if per_run:  # the largest possible entropy, ln(classes seen), and the task boundaries of the first run
        run, series = per_run[0][0], per_run[0][1]
        a2.step([s[0] for s in series], [math.log(max(s[2]["classes"], 1)) for s in series], where="mid", color="grey", ls=":",
                lw=1, label="ln(classes seen): uniform over classes")
        E = run.get("train.epochs_per_task")
        tasks = max(s[1] for s in series) + 1
        for ax in (a1, a2):
            for t in range(1, tasks):
                ax.axvline(t * E, color="lightgrey", lw=0.8, zorder=0)
    a1.set_xlabel("epoch")
    a1.set_ylabel("alive neurons (%)")
    a1.set_ylim(-2, 102)
    a1.set_title("Alive neurons: seen tasks' training data (solid),\never alive so far (dashed), seen tasks' test data (dotted)", fontsize=9)
    a1.legend(fontsize=7)
    a2.set_xlabel("epoch")
    a2.set_ylabel("mean class entropy per neuron (nats)")
    a2.set_title("Class entropy of the neurons' activity (training data of the seen tasks)", fontsize=9)
    a2.legend(fontsize=7)
    paths = [save_figure(fig, out / "neurons_over_time.png")]

    k = len(per_run)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.0), squeeze=False, sharey=False)
    for ax, (run, _, ent, _, classes, _) in zip(axes[0], per_run):
        h = ent[~np.isnan(ent)]
        top = math.log(max(classes, 1))
        ax.hist(h, bins=np.linspace(0, max(top, 1e-3), 31), color="steelblue")
        if len(h):
            ax.axvline(h.mean(), color="crimson", lw=1.2)
        ax.set_title(f"{run.label}\nmean {h.mean():.2f} nats, {len(h)} neurons" if len(h) else f"{run.label}\nno active neuron", fontsize=8)
        ax.set_xlabel(f"class entropy (nats; max ln {classes} = {top:.2f})", fontsize=8)
    axes[0][0].set_ylabel("neurons")
    paths.append(save_figure(fig, out / "class_entropy.png"))

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for i, (run, _, _, cum, _, since) in enumerate(per_run):
        if cum is None:
            continue
        alive = cum[cum > 0]
        if len(alive):
            ax.hist(np.log10(alive), bins=40, alpha=0.5, color=cmap(i % 10),
                    label=f"{run.label} ({100 * len(alive) / len(cum):.1f}% active from epoch {since})")
    ax.set_xlabel("log10(training inputs a neuron was active for, summed over the snapshots from the end of task 1)")
    ax.set_ylabel("neurons")
    ax.set_title("How often each neuron is active once the k schedule / GABA switch has settled\n(neurons never active are left out)",
                 fontsize=9)
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / "activation_counts.png"))
    return paths

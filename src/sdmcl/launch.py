"""Which runs an experiment expands to, and running them one after another."""

from __future__ import annotations

import json


def _fmt_pct(x: float) -> str:
    return f"{100 * x:5.1f}"


def print_run(label: str, rd, summary: dict) -> None:
    from sdmcl.report import setting_marks

    label = label + setting_marks(summary)
    accs = " ".join(_fmt_pct(a) for a in summary["final_task_accuracy"])
    print(f"{label}: final per-task accuracy (%): {accs}")
    print(f"{label}: final average accuracy {_fmt_pct(summary['final_average_accuracy'])}%  "
          f"forgetting {_fmt_pct(summary['forgetting'])}  BWT {100 * summary['backward_transfer']:+.1f}  "
          f"task-aware {_fmt_pct(summary['final_task_aware_accuracy'])}%  "
          f"({summary['seconds_per_epoch']:.3f} s/epoch)")
    print(f"{label}: results in {rd.path} (plots in {rd.path / 'plots'})")


def run_many(runs, resume=None, progress=True) -> list[tuple[str, dict]]:
    from sdmcl.train.engine import prepare, run

    results = []
    prepared_cache = {}
    for label, cfg in runs:
        key = json.dumps([cfg.data.__dict__, cfg.benchmark.__dict__, cfg.train.device], sort_keys=True, default=str)
        if key not in prepared_cache:
            prepared_cache.clear()  # keep at most one data set in memory
            prepared_cache[key] = prepare(cfg)
        prepared = prepared_cache[key]
        prepared.cfg = cfg
        print(f"== {label} (seed {cfg.seed}) — {cfg.model.name}"
              + (f" + {cfg.regularizer.name}" if cfg.regularizer.name != "none" else "")
              + f", {len(prepared.tasks)} tasks × {cfg.train.epochs_per_task} epochs on {prepared.dataset_name}")
        rd, summary = run(cfg, resume=resume, progress=progress, prepared=prepared)
        print_run(label, rd, summary)
        results.append((label, summary))
    return results

"""Tables of results: one row per group of runs, mean ± s.e.m. over seeds."""

from __future__ import annotations

import json
from pathlib import Path

from sdmcl.errors import UserError


def setting_marks(summary: dict) -> str:
    """Marks for runs not scored in the default class-incremental, label-free setting:
    `[label-informed]` (the true label reached the model at test time) and `[task-IL]`
    (task-incremental: the task was given at test time, accuracies are task-aware)."""
    marks = []
    if summary.get("label_informed"):
        marks.append("[label-informed]")
    if summary.get("task_incremental"):
        marks.append("[task-IL]")
    return (" " + " ".join(marks)) if marks else ""


def comparison_table(rows: list[tuple[str, dict]]) -> str:
    """One row per label: mean ± s.e.m. over seeds of the headline metrics."""
    from sdmcl.metrics import mean_sem

    groups: dict[str, list[dict]] = {}
    for label, s in rows:
        groups.setdefault(label + setting_marks(s), []).append(s)
    head = f"{'method':<28} {'seeds':>5} {'final avg acc %':>17} {'forgetting %':>15} {'BWT %':>14} {'s/epoch':>8}"
    lines = [head, "-" * len(head)]
    for label, ss in groups.items():
        def ms(key, scale=100):
            m, e = mean_sem([scale * s[key] for s in ss])
            return f"{m:6.1f} ± {e:4.1f}"
        spe = sum(s["seconds_per_epoch"] for s in ss) / len(ss)
        lines.append(f"{label:<28} {len(ss):>5} {ms('final_average_accuracy'):>17} {ms('forgetting'):>15} "
                     f"{ms('backward_transfer'):>14} {spe:8.3f}")
    return "\n".join(lines)


def report_run_dirs(run_dirs: list[str]) -> str:
    """The table of the finished runs in `run_dirs`."""
    rows = []
    for d in run_dirs:
        p = Path(d) / "summary.json"
        if not p.is_file():
            raise UserError(f"{d}: no summary.json (the run is unfinished or this is not a run directory)")
        s = json.loads(p.read_text())
        rows.append((s.get("name", d), s))
    return comparison_table(rows)

"""Tables of results: one row per group of runs, mean ± s.e.m. over seeds."""

from __future__ import annotations

from pathlib import Path

from sdmcl.errors import UserError


def comparison_table(rows: list[tuple[str, dict]]) -> str:
    """One row per label: mean ± s.e.m. over seeds of the headline metrics."""
    from sdmcl.metrics import mean_sem

    groups: dict[str, list[dict]] = {}
    for label, s in rows:
        groups.setdefault(label, []).append(s)
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


def report_run_dirs(run_dirs: list[str], note=None) -> str:
    """The table of the finished runs in `run_dirs`. A directory that is not a finished run,
    or whose summary.json is damaged, is skipped and `note(reason)` says so; none left is an error."""
    from sdmcl.train.rundir import read_summary

    rows, skipped = [], []
    for d in run_dirs:
        try:
            s = read_summary(Path(d))
        except UserError as e:
            skipped.append(str(e))
            continue
        rows.append((s["name"], s))
    if not rows:
        more = f" (and {len(skipped) - 1} more directories skipped)" if len(skipped) > 1 else ""
        raise UserError(f"no finished run to report: {skipped[0] if skipped else 'no directories given'}{more}")
    for reason in skipped:
        if note is not None:
            note(f"skipped {reason}")
    return comparison_table(rows)

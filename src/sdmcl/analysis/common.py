"""What every analysis shares: finding run directories, reading what runs wrote, writing
CSV files and figures. Analyses read run directories only; they never import the engine."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdmcl.errors import UserError

INVESTIGATIONS_DIR = "investigations"  # the engine-side writer names the same folder


@dataclass
class Run:
    """One run directory and what it holds."""

    path: Path
    config: dict
    summary: dict | None = None
    label: str = ""
    _snapshots: list[Path] | None = field(default=None, repr=False)

    def get(self, dotted: str, default=None):
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def investigations(self) -> Path:
        return self.path / INVESTIGATIONS_DIR

    def snapshot_paths(self) -> list[Path]:
        if self._snapshots is None:
            d = self.investigations / "activations"
            found = []
            for p in d.glob("epoch_*.npz") if d.is_dir() else []:
                try:
                    found.append((int(p.stem.split("_", 1)[1]), p))
                except ValueError:
                    continue
            self._snapshots = [p for _, p in sorted(found)]
        return self._snapshots

    def require_snapshots(self, what: str) -> list[Path]:
        paths = self.snapshot_paths()
        if not paths:
            raise UserError(f"{self.path}: no activation snapshots for `{what}`; run it with investigate.activations_every=N "
                            "(e.g. `sdmcl run CONFIG investigate.activations_every=5`)")
        return paths

    def metrics(self) -> list[dict]:
        from sdmcl.train.rundir import read_metrics  # validated, like every artefact read back

        if not (self.path / "metrics.jsonl").is_file():
            return []
        return read_metrics(self.path)

    def require_summary(self, what: str) -> dict:
        if self.summary is None:
            raise UserError(f"{self.path}: unfinished run (no summary.json); `{what}` needs finished runs — finish it with `sdmcl run --resume {self.path}`")
        return self.summary


def load_snapshot(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: unreadable activation snapshot ({e}); delete it or re-run the run") from None


def _read_run(path: Path) -> Run:
    # the validating readers of every run-directory file (strict YAML, checked summary.json)
    from sdmcl.train.rundir import read_run_config_dict, read_summary

    config = read_run_config_dict(path)
    summary = read_summary(path) if (path / "summary.json").is_file() else None
    return Run(path=path, config=config, summary=summary)


def find_runs(args: list[str], what: str, required: bool = True) -> list[Run]:
    """Run directories named by `args`: each a run directory (holding config.yaml) or a
    folder of run directories (e.g. `runs/`). Labels are the run names, with the seed added
    where several runs share a name."""
    runs: list[Run] = []
    for a in args:
        p = Path(a)
        if (p / "config.yaml").is_file():
            runs.append(_read_run(p))
        elif p.is_dir():
            children = sorted(c for c in p.iterdir() if (c / "config.yaml").is_file())
            if not children:
                raise UserError(f"{a}: neither a run directory (no config.yaml) nor a folder of run directories")
            runs += [_read_run(c) for c in children]
        else:
            raise UserError(f"{a}: no such run directory; give directories written by `sdmcl run` (e.g. runs/NAME-STAMP)")
    if required and not runs:
        raise UserError(f"sdmcl analyze {what}: give one or more run directories (or a folder of them, e.g. runs/)")
    names: dict[str, int] = {}
    for r in runs:
        names[str(r.get("name", r.path.name))] = names.get(str(r.get("name", r.path.name)), 0) + 1
    for r in runs:
        name = str(r.get("name", r.path.name))
        r.label = f"{name} (seed {r.get('seed')})" if names[name] > 1 else name
    return runs


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow([_fmt(v) for v in r])
    from sdmcl.train.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, lambda f: f.write(buf.getvalue().encode()))
    return path


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return "" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, np.integer):
        return int(v)
    return "" if v is None else v


def pyplot():
    from sdmcl.plots import _pyplot

    return _pyplot()


def save_figure(fig, path: Path) -> Path:
    from sdmcl.plots import _save

    _save(fig, path)
    return path


def mean_sem(values) -> tuple[float, float]:
    from sdmcl.metrics import mean_sem as ms

    return ms(values)


def table(header: list[str], rows: list[list]) -> str:
    """A plain-text table for the terminal."""
    cells = [[str(_fmt(v)) if not isinstance(v, str) else v for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties); NaN for fewer than 3 points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3:
        return math.nan

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for val in np.unique(v):  # ties share their average rank
            m = v == val
            r[m] = r[m].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])

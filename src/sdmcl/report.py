"""Tables and figures of finished runs, grouped by resolved config (never by name).

Runs share a row only when their resolved configs (`config.yaml`, compared without the keys
that do not change results, `sdmcl.config.result_identity`) are equal apart from the keys
averaged over: `seed` by default; `--over seed,class_order` also pools the class orders
(`benchmark.class_order` and `benchmark.class_order_seed`), as the paper's tables do. A row
is labelled by its run name and, when several rows share that name, by the keys in which
they differ (`sdmlp (model.k=3)`). A row of one run shows no ± (the s.e.m. of one value is
undefined).

`collect_runs(paths)` finds run directories (paths, parent directories searched
recursively, globs) and reports the unfinished, failed and corrupt ones as problems instead
of stopping; `group_runs` builds the rows; `render_table` writes text, Markdown, CSV or
LaTeX; `write_report` adds the figures across runs and a static `report.html`.
This module reads run directories only; it never imports the engine.
"""

from __future__ import annotations

import csv
import fcntl
import glob as globlib
import html
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdmcl.config import flatten, result_identity
from sdmcl.errors import OutputError, UserError

FORMATS = ("text", "markdown", "csv", "latex")
DEFAULT_OVER = ("seed",)
# Names accepted by --over besides dotted config keys.
OVER_ALIASES = {
    "seed": ("seed",),
    "class_order": ("benchmark.class_order", "benchmark.class_order_seed"),
}
# (summary key, column heading, unit scale)
METRICS = (
    ("final_average_accuracy", "final avg acc %", 100.0),
    ("forgetting", "forgetting %", 100.0),
    ("backward_transfer", "BWT %", 100.0),
)
MAX_LABEL_KEYS = 4


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


@dataclass
class Run:
    """A finished run: its resolved config and summary (and where it lies, when read from disk)."""

    config: dict
    summary: dict
    path: Path | None = None

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.summary.get("name") or "run")


@dataclass
class Problem:
    """A run directory that is not in the table, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Group:
    """One table row: runs whose configs are equal apart from the keys averaged over."""

    name: str
    identity: dict  # flattened config without the averaged keys
    runs: list[Run] = field(default_factory=list)
    axis_values: list[tuple] = field(default_factory=list)  # per run, the values of the averaged keys
    label: str = ""

    def values(self, key: str) -> list[float]:
        return [float(r.summary[key]) for r in self.runs if _finite(r.summary.get(key))]


# ---------------------------------------------------------------- reading run directories


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# The readers of run-directory files are those of `sdmcl.train.rundir` (one place validates
# every artefact read back); these take the file's path, as the rest of this module does.


def read_summary(path: Path) -> dict:
    """summary.json, validated; UserError naming the file and the defect."""
    from sdmcl.train.rundir import read_summary as read

    return read(Path(path).parent)


def read_config(path: Path) -> dict:
    """config.yaml as plain data, read by the strict YAML reader; UserError naming the defect."""
    from sdmcl.train.rundir import read_run_config_dict

    return read_run_config_dict(Path(path).parent)


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl, every line validated; UserError naming the first bad line."""
    from sdmcl.train.rundir import read_metrics as read

    return read(Path(path).parent)


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "summary.json").is_file()


def _lock_holder(path: Path) -> str | None:
    """The pid written in a run's .lock when a process holds that lock now, else None."""
    lock = path / ".lock"
    if not lock.is_file():
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)


def _unfinished_reason(path: Path) -> str:
    holder = _lock_holder(path)
    where = ""
    try:
        entries = read_metrics(path / "metrics.jsonl") if (path / "metrics.jsonl").is_file() else []
        if entries:
            last = entries[-1]
            where = f"; last evaluation after epoch {last.get('epoch')} (task {int(last.get('task', 0)) + 1})"
    except UserError:
        where = "; metrics.jsonl is damaged"
    if holder is not None:
        return f"running (process {holder}){where}"
    resume = f"resume with `sdmcl run --resume {path}`" if (path / "checkpoints" / "last.pt").is_file() \
        else "no checkpoint yet: run its config again to start it over"
    return f"unfinished or failed: no summary.json{where}; {resume}"


def load_run(path: Path) -> Run | Problem:
    """A finished run, or the problem that keeps it out of the table."""
    summary_path, config_path = path / "summary.json", path / "config.yaml"
    if not summary_path.is_file():
        return Problem(path, _unfinished_reason(path))
    if not config_path.is_file():
        return Problem(path, "corrupt: summary.json without config.yaml (its configuration is unknown)")
    from sdmcl.train.rundir import config_edit_problem

    try:
        run = Run(read_config(config_path), read_summary(summary_path), path)
        problem = config_edit_problem(path, run.summary)
        return Problem(path, f"changed: {problem}") if problem else run
    except UserError as e:
        return Problem(path, f"corrupt: {str(e).removeprefix(str(path) + '/')}")


def _expand(pattern: str) -> list[Path]:
    if any(c in pattern for c in "*?["):
        return [Path(p) for p in sorted(globlib.glob(os.path.expanduser(pattern), recursive=True))]
    return [Path(pattern).expanduser()]


def find_run_dirs(paths: list[str]) -> list[Path]:
    """Run directories named by `paths`: run directories themselves, directories searched
    recursively for run directories (not inside one), and glob patterns of either."""
    found: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            found.append(p)

    for pattern in paths:
        matches = _expand(pattern)
        if not matches:
            raise UserError(f"{pattern}: matches no file or directory")
        matched = False
        for p in matches:
            if not p.exists():
                raise UserError(f"{p}: no such file or directory; give run directories or a directory that holds them")
            if p.is_file():
                p = p.parent  # e.g. runs/*/summary.json
            if is_run_dir(p):
                add(p)
                matched = True
                continue
            for root, dirs, _files in os.walk(p):
                dirs.sort()
                here = Path(root)
                if is_run_dir(here):
                    add(here)
                    matched = True
                    dirs[:] = []  # nothing inside a run directory is another run
        if not matched:
            raise UserError(f"{pattern}: holds no run directory (one with config.yaml or summary.json)")
    return found


def collect_runs(paths: list[str]) -> tuple[list[Run], list[Problem]]:
    runs, problems = [], []
    for path in find_run_dirs(paths):
        loaded = load_run(path)
        (runs if isinstance(loaded, Run) else problems).append(loaded)
    return runs, problems


# ---------------------------------------------------------------- grouping


def parse_over(text: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """`seed,class_order` → the dotted config keys averaged over (aliases expanded)."""
    if text is None:
        return DEFAULT_OVER
    items = text.split(",") if isinstance(text, str) else [t for part in text for t in part.split(",")]
    keys: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", item):
            raise UserError(f"--over {item!r}: give dotted config keys (e.g. seed,benchmark.class_order_seed) "
                            f"or {', '.join(OVER_ALIASES)}")
        for key in OVER_ALIASES.get(item, (item,)):
            if key not in keys:
                keys.append(key)
    if not keys:
        raise UserError("--over: empty; give the keys to average over, e.g. --over seed")
    return tuple(keys)


def _fmt_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v)


def _label_groups(groups: list[Group]) -> dict[str, list[str]]:
    """Name each row; rows that share a name also get the keys in which they differ.
    Returns those keys per name."""
    by_name: dict[str, list[Group]] = {}
    for g in groups:
        by_name.setdefault(g.name, []).append(g)
    keys_by_name = {}
    for name, same in by_name.items():
        if len(same) == 1:
            same[0].label = name
            continue
        keys = sorted({k for g in same for k in g.identity})
        differing = [k for k in keys if len({json.dumps(g.identity.get(k, "-"), sort_keys=True) for g in same}) > 1]
        keys_by_name[name] = differing
        for g in same:
            parts = [f"{k}={_fmt_value(g.identity.get(k, '-'))}" for k in differing[:MAX_LABEL_KEYS]]
            if len(differing) > MAX_LABEL_KEYS:
                parts.append(f"+{len(differing) - MAX_LABEL_KEYS} more keys")
            g.label = f"{name} ({', '.join(parts)})"
    return keys_by_name


def group_runs(runs: list[Run], over: tuple[str, ...] = DEFAULT_OVER) -> tuple[list[Group], list[Problem]]:
    """Rows of runs with equal configs apart from the keys in `over`, in order of first appearance.

    A second run with the same config *and* the same values of `over` (a copy of a run
    directory) is counted once and reported as a problem: it would otherwise pose as another seed.
    """
    groups: dict[str, Group] = {}
    problems: list[Problem] = []
    identities = [flatten(result_identity(run.config)) for run in runs]
    for run, ident in zip(runs, identities):
        if run.summary.get("data_content"):  # the content of the user's data files stands in for data.path
            ident["data.content"] = run.summary["data_content"]
        if isinstance(run.summary.get("init_from_content"), str):  # and the checkpoint's content for init_from's path
            ident["init_from"] = "sha256:" + run.summary["init_from_content"]
    known = set().union(*identities) if identities else set()
    for key in over:
        if identities and key not in known:
            import difflib

            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else "; give dotted config keys such as seed or model.k"
            raise UserError(f"--over {key}: no run's config has this key{hint}")
    for run, ident in zip(runs, identities):
        axis = tuple(json.dumps(ident.pop(k, None), sort_keys=True) for k in over)
        key = json.dumps(ident, sort_keys=True)
        g = groups.get(key)
        if g is None:
            g = groups[key] = Group(run.name, ident)
        if axis in g.axis_values:
            twin = g.runs[g.axis_values.index(axis)]
            problems.append(Problem(run.path or Path(run.name),
                                    f"duplicate: same config and {', '.join(over)} as {twin.path or twin.name}; counted once"))
            continue
        g.runs.append(run)
        g.axis_values.append(axis)
    out = list(groups.values())
    for g in out:  # runs in order of the averaged values (seed 0, 1, ...)
        order = sorted(range(len(g.runs)), key=lambda i: [_sort_key(json.loads(v)) for v in g.axis_values[i]])
        g.runs, g.axis_values = [g.runs[i] for i in order], [g.axis_values[i] for i in order]
    differing = _label_groups(out)
    for g in out:  # runs not scored class-incrementally from the input alone say so in every table
        g.label += setting_marks(g.runs[0].summary)
    # rows of one name stay together (in order of first appearance), ordered by the values that tell them apart
    first = {}
    for i, g in enumerate(out):
        first.setdefault(g.name, i)
    out.sort(key=lambda g: (first[g.name], [_sort_key(g.identity.get(k)) for k in differing.get(g.name, [])]))
    return out, problems


def _sort_key(v: Any) -> tuple:
    if isinstance(v, bool) or v is None:
        return (0, str(v))
    if isinstance(v, (int, float)):
        return (1, v)
    return (2, json.dumps(v, sort_keys=True) if not isinstance(v, str) else v)


# ---------------------------------------------------------------- tables


def mean_sem(values: list[float]) -> tuple[float, float | None]:
    """Mean and s.e.m. (std with ddof=1 over √n); the s.e.m. is None for fewer than 2 values."""
    n = len(values)
    if n == 0:
        return math.nan, None
    m = sum(values) / n
    if n < 2:
        return m, None
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


@dataclass
class Cell:
    mean: float
    sem: float | None

    def text(self, digits: int = 1, signed: bool = False) -> str:
        if math.isnan(self.mean):
            return "-"
        m = f"{self.mean:+.{digits}f}" if signed else f"{self.mean:.{digits}f}"
        return m if self.sem is None else f"{m} ± {self.sem:.{digits}f}"


@dataclass
class Table:
    columns: list[str]  # headings after "method" and "n"
    rows: list[tuple[str, int, list[Cell], list[str]]]  # label, n, cells, averaged-over values
    signed: set[int] = field(default_factory=set)  # columns shown with a sign
    over: tuple[str, ...] = DEFAULT_OVER


def _axis_text(axis: tuple) -> str:
    return ",".join(_fmt_value(json.loads(v)) for v in axis)


def build_table(groups: list[Group], per_task: bool = False, over: tuple[str, ...] = DEFAULT_OVER) -> Table:
    columns = [heading for _, heading, _ in METRICS] + ["s/epoch"]
    T = max((len(r.summary["final_task_accuracy"]) for g in groups for r in g.runs), default=0) if per_task else 0
    columns += [f"T{j + 1} %" for j in range(T)]
    rows = []
    for g in groups:
        cells = [Cell(*mean_sem([scale * v for v in g.values(key)])) for key, _, scale in METRICS]
        spe = g.values("seconds_per_epoch")
        cells.append(Cell(sum(spe) / len(spe), None) if spe else Cell(math.nan, None))
        for j in range(T):
            accs = [100.0 * r.summary["final_task_accuracy"][j] for r in g.runs if len(r.summary["final_task_accuracy"]) > j]
            cells.append(Cell(*mean_sem(accs)))
        rows.append((g.label, len(g.runs), cells, [_axis_text(a) for a in g.axis_values]))
    return Table(columns, rows, signed={2}, over=over)


def _cell_text(table: Table, i: int, cell: Cell) -> str:
    if table.columns[i] == "s/epoch":
        return "-" if math.isnan(cell.mean) else f"{cell.mean:.3f}"
    return cell.text(signed=i in table.signed)


def _text(table: Table) -> str:
    cells = [[_cell_text(table, i, c) for i, c in enumerate(cs)] for _, _, cs, _ in table.rows]
    width = max([len("method")] + [len(label) for label, *_ in table.rows])
    col_w = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(table.columns)]
    head = f"{'method':<{width}}  {'n':>3}  " + "  ".join(f"{h:>{w}}" for h, w in zip(table.columns, col_w))
    lines = [head, "-" * len(head)]
    for (label, n, _, _), row in zip(table.rows, cells):
        lines.append(f"{label:<{width}}  {n:>3}  " + "  ".join(f"{c:>{w}}" for c, w in zip(row, col_w)))
    return "\n".join(lines)


def _markdown(table: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| method | n | " + " | ".join(table.columns) + " |",
             "|---|---:|" + "---:|" * len(table.columns)]
    for label, n, cells, _ in table.rows:
        lines.append(f"| {esc(label)} | {n} | " + " | ".join(_cell_text(table, i, c) for i, c in enumerate(cells)) + " |")
    return "\n".join(lines)


def _csv(table: Table) -> str:
    def slug(h: str) -> str:
        return re.sub(r"[^a-z0-9]+", "_", h.lower().replace("%", "pct")).strip("_")

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["method", "n", "over_" + "+".join(table.over)]
    for h in table.columns:
        head += [slug(h)] if h == "s/epoch" else [slug(h) + "_mean", slug(h) + "_sem"]
    w.writerow(head)
    for label, n, cells, axis in table.rows:
        row = [label, n, ";".join(axis)]
        for h, c in zip(table.columns, cells):
            mean = "" if math.isnan(c.mean) else f"{c.mean:.6g}"
            row += [mean] if h == "s/epoch" else [mean, "" if c.sem is None else f"{c.sem:.6g}"]
        w.writerow(row)
    return buf.getvalue().rstrip("\n")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in s)


def _latex(table: Table) -> str:
    lines = [r"% needs \usepackage{booktabs}", r"\begin{tabular}{l r " + "r " * len(table.columns) + "}", r"\toprule",
             "method & $n$ & " + " & ".join(latex_escape(h) for h in table.columns) + r" \\", r"\midrule"]
    for label, n, cells, _ in table.rows:
        texts = []
        for i, c in enumerate(cells):
            t = _cell_text(table, i, c)
            texts.append("--" if t == "-" else "$" + t.replace("±", r"\pm") + "$")
        lines.append(f"{latex_escape(label)} & {n} & " + " & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


RENDERERS = {"text": _text, "markdown": _markdown, "csv": _csv, "latex": _latex}


def render_table(table: Table, fmt: str = "text") -> str:
    if fmt not in RENDERERS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return RENDERERS[fmt](table)


def render_problems(problems: list[Problem], fmt: str = "text") -> str:
    """The runs left out of the table, one per line ('' when none)."""
    if not problems:
        return ""
    lines = [f"not in the table ({len(problems)}):"] + [f"  {p}" for p in problems]
    if fmt == "markdown":
        lines = [f"Not in the table ({len(problems)}):", ""] + [f"- `{p.path}`: {p.reason}" for p in problems]
    return "\n".join(lines)


def _as_run(config, summary: dict) -> Run:
    return Run(config if isinstance(config, dict) else config.to_dict(), summary)


def comparison(results: list[tuple[Any, dict]], over: tuple[str, ...] = DEFAULT_OVER, fmt: str = "text",
               per_task: bool = False) -> tuple[str, str]:
    """(table, notes) of runs in hand: (RunConfig or resolved config dict, summary) pairs,
    grouped exactly as `sdmcl report` groups run directories."""
    groups, problems = group_runs([_as_run(c, s) for c, s in results], over)
    return render_table(build_table(groups, per_task, over), fmt), render_problems(problems, fmt)


def comparison_table(results: list[tuple[Any, dict]], over: tuple[str, ...] = DEFAULT_OVER, per_task: bool = False) -> str:
    """The text table of runs in hand, with the runs counted once listed under it."""
    table, notes = comparison(results, over, "text", per_task)
    return table + ("\n\n" + notes if notes else "")


def report_runs(paths: list[str], over: tuple[str, ...] = DEFAULT_OVER) -> tuple[list[Group], list[Problem]]:
    """The rows of the finished runs under `paths`, and the runs left out (with why)."""
    runs, problems = collect_runs(paths)
    groups, dupes = group_runs(runs, over)
    return groups, problems + dupes


# ---------------------------------------------------------------- figures and report.html


@dataclass
class Curve:
    """A row's average accuracy over the tasks seen so far, per evaluated epoch, over its runs."""

    label: str
    epochs: list[int]
    mean: list[float]
    sem: list[float | None]
    n: list[int]
    boundaries: list[int]


def group_curve(group: Group, problems: list[Problem]) -> Curve | None:
    per_epoch: dict[int, list[float]] = {}
    task_ends: set[tuple] = set()  # per run, the epoch at which each task ended
    for run in group.runs:
        if run.path is None:
            continue
        try:
            entries = read_metrics(run.path / "metrics.jsonl")
        except UserError as e:
            problems.append(Problem(run.path, f"left out of the figures: {e}"))
            continue
        ends: dict = {}
        for e in entries:
            epoch, acc = e.get("epoch"), e.get("seen_average_accuracy")
            if isinstance(epoch, int) and _finite(acc):
                per_epoch.setdefault(epoch, []).append(100.0 * acc)
                ends[e.get("task")] = epoch
        task_ends.add(tuple(ends[t] for t in sorted(t for t in ends if isinstance(t, int))))
    if not per_epoch:
        return None
    epochs = sorted(per_epoch)
    stats = [mean_sem(per_epoch[e]) for e in epochs]
    # task boundaries where every run of the row has them (a model may end tasks early: NISPA)
    boundaries = list(next(iter(task_ends))[:-1]) if len(task_ends) == 1 and not group.identity.get("benchmark.joint") else []
    return Curve(group.label, epochs, [m for m, _ in stats], [s for _, s in stats], [len(per_epoch[e]) for e in epochs], boundaries)


def _html_table(table: Table) -> str:
    esc = html.escape
    head = "<tr><th>method</th><th>n</th>" + "".join(f"<th>{esc(h)}</th>" for h in table.columns) + "</tr>"
    body = []
    for label, n, cells, axis in table.rows:
        tds = "".join(f"<td>{esc(_cell_text(table, i, c))}</td>" for i, c in enumerate(cells))
        title = esc(f"{'+'.join(table.over)}: {'; '.join(axis)}")
        body.append(f'<tr><td class="label" title="{title}">{esc(label)}</td><td>{n}</td>{tds}</tr>')
    return f"<table>\n<thead>{head}</thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def _html(table: Table, groups: list[Group], problems: list[Problem], figures: list[tuple[str, str]], out: Path,
          sources: list[str]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>sdmcl report</title>',
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border-bottom:1px solid #ccc;padding:.3em .7em;text-align:right}"
        "th:first-child,td.label{text-align:left}img{max-width:100%}code{background:#f3f3f3;padding:0 .2em}"
        "details{margin:.3em 0}</style></head><body>",
        "<h1>sdmcl report</h1>",
        f"<p>Runs from {', '.join(f'<code>{esc(s)}</code>' for s in sources)}. Each row groups the runs whose resolved "
        f"configs are equal apart from <code>{esc(', '.join(table.over))}</code>; values are mean ± s.e.m. over those runs "
        "(no ± for a single run).</p>",
        _html_table(table),
    ]
    if problems:
        parts.append(f"<h2>Not in the table ({len(problems)})</h2><ul>")
        parts += [f"<li><code>{esc(str(p.path))}</code>: {esc(p.reason)}</li>" for p in problems]
        parts.append("</ul>")
    for title, png in figures:
        parts.append(f"<h2>{esc(title)}</h2><img src=\"{esc(png)}\" alt=\"{esc(title)}\">")
    parts.append("<h2>Runs of each row</h2>")
    for g in groups:
        items = []
        for run, axis in zip(g.runs, g.axis_values):
            if run.path is None:
                continue
            rel = os.path.relpath(run.path, out)
            plot = run.path / "plots" / "task_accuracy.png"
            link = f' (<a href="{esc(os.path.relpath(plot, out))}">accuracy plot</a>)' if plot.is_file() else ""
            items.append(f"<li><a href=\"{esc(rel)}\">{esc(run.path.name)}</a> — "
                         f"{esc(', '.join(f'{k}={json.loads(v)}' for k, v in zip(table.over, axis)))}{link}</li>")
        parts.append(f"<details><summary>{esc(g.label)} ({len(g.runs)})</summary><ul>{''.join(items)}</ul></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(groups: list[Group], problems: list[Problem], out: str | Path, over: tuple[str, ...] = DEFAULT_OVER,
                 per_task: bool = False, sources: list[str] = ()) -> dict[str, Path]:
    """The table in every format, the figures across runs and report.html, in directory `out`.
    Returns the paths written, by kind. `problems` gains the runs whose metrics are unreadable."""
    from sdmcl import plots

    if not groups:
        raise UserError("no finished run to report")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out}: cannot create the report directory ({e.strerror or e}); choose another --out") from None
    table = build_table(groups, per_task, over)
    written: dict[str, Path] = {}
    for fmt, suffix in (("text", "txt"), ("markdown", "md"), ("csv", "csv"), ("latex", "tex")):
        path = out / f"table.{suffix}"
        path.write_text(render_table(table, fmt) + "\n")
        written[fmt] = path
    figures = []
    curves = [c for c in (group_curve(g, problems) for g in groups) if c is not None]
    if curves:
        plots.plot_curves_over_epochs(curves, out / "accuracy_over_epochs.png")
        figures.append(("Average accuracy over the tasks seen so far (mean ± s.e.m. over runs)", "accuracy_over_epochs.png"))
        written["accuracy_over_epochs"] = out / "accuracy_over_epochs.png"
    bars = [(g.label, [100.0 * v for v in g.values("final_average_accuracy")]) for g in groups]
    plots.plot_final_accuracy_bars(bars, out / "final_accuracy.png")
    figures.append(("Final average accuracy over all tasks (mean ± s.e.m.; dots: single runs)", "final_accuracy.png"))
    written["final_accuracy"] = out / "final_accuracy.png"
    (out / "report.html").write_text(_html(table, groups, problems, figures, out, list(sources)))
    written["html"] = out / "report.html"
    return written

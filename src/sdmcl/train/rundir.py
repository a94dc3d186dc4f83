"""One directory per run: `<output.dir>/<name>-<stamp>/`, the stamp a hash of the resolved
config (van de Ven's run stamp), so a re-run of the same config finds its own results.

    config.yaml            the resolved config
    metrics.jsonl          one JSON line per evaluation
    accuracy_matrix.csv    R[i][j] = accuracy on task j after training task i
    summary.json           final metrics; written last: its presence marks a finished run
    model.pt               final weights with their config (usable as `init_from`)
    checkpoints/last.pt    resumable state
    plots/*.png
    investigations/        what `investigate.*` asked for (train/investigations.py)

A run directory is the source of truth for its run: `sdmcl run --resume DIR` continues from
DIR's own config.yaml and checkpoint wherever DIR lives now. Everything read back from a run
directory goes through the readers at the end of this file (`read_summary`, `read_metrics`,
`read_run_config`, `read_resume_checkpoint`, `config_for_resume`), which validate it and
report a damaged file by name (a `UserError`, exit code 2).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from sdmcl.config import RunConfig, parse_config, parse_override, result_differences, set_dotted
from sdmcl.errors import CheckpointError, ConfigError, OutputError, UserError
from sdmcl.strict_yaml import dump_yaml, load_yaml_file


class RunLocked(OutputError):
    """The run directory is locked by another live process (which may be training it)."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path}: in use by process {holder}; wait for it to finish or stop it (its checkpoint lets you resume)")
        self.path, self.holder = path, holder


def run_dir_for(cfg: RunConfig) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in cfg.name) or "run"
    return Path(cfg.output.dir) / f"{safe}-{cfg.stamp()}"


class RunDir:
    reused = False  # set when a finished run's summary is returned instead of training it

    def __init__(self, path: Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    matrix_path = property(lambda self: self.path / "accuracy_matrix.csv")
    checkpoint_path = property(lambda self: self.path / "checkpoints" / "last.pt")
    model_path = property(lambda self: self.path / "model.pt")
    plots_dir = property(lambda self: self.path / "plots")

    def is_finished(self) -> bool:
        return self.summary_path.is_file()

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def raise_if_in_use(self) -> None:
        holder = self.lock_holder()
        if holder is not None:
            raise RunLocked(self.path, holder)

    @contextlib.contextmanager
    def locked(self):
        """Hold an exclusive lock on the run directory (a second process is refused, naming the holder)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"{self.path}: cannot create the run directory ({e.strerror or e}); set output.dir to a writable place") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                raise RunLocked(self.path, holder) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield self
        finally:
            os.close(fd)  # closing releases the lock

    def lock_holder(self) -> str | None:
        """The pid of the live process holding this run's lock, or None (creates nothing)."""
        try:
            fd = os.open(self.path / ".lock", os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        finally:
            os.close(fd)  # closing releases a shared lock taken here

    def create(self, cfg: RunConfig) -> None:
        try:
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise OutputError(f"{self.path}: output directory is not writable ({e.strerror or e}); set output.dir to a writable place") from None
        self.write_text(self.config_path, dump_yaml(cfg.to_dict()))

    def write_text(self, path: Path, text: str) -> None:
        from sdmcl.train.checkpoint import atomic_write_bytes  # imported here: reading a run needs no torch

        atomic_write_bytes(path, lambda f: f.write(text.encode()))

    def write_metrics(self, history: list[dict]) -> None:
        """Rewrite metrics.jsonl from the history (after a resume the file matches the checkpoint)."""
        self.write_text(self.metrics_path, "".join(json.dumps(h) + "\n" for h in history))

    def append_metrics(self, entry: dict) -> None:
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError as e:
            raise OutputError(f"{self.metrics_path}: could not write ({e.strerror or e}); free disk space or choose another output.dir") from None

    def write_matrix(self, R: list[list[float]], task_labels: list[str]) -> None:
        """CSV: header `after_task,<classes of task 1>,...`; classes joined by '+' (e.g. 0+1)."""
        task_labels = [label.replace(",", "+") for label in task_labels]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["after_task"] + task_labels)
        for i, row in enumerate(R):
            w.writerow([task_labels[i]] + [f"{v:.6f}" for v in row])
        self.write_text(self.matrix_path, buf.getvalue())

    def write_summary(self, summary: dict) -> None:
        self.write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")

    def clear_results(self) -> None:
        """Remove outputs of an unfinished run that restarts from scratch."""
        for p in (self.metrics_path, self.matrix_path, self.summary_path, self.model_path, self.checkpoint_path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


# ---------------------------------------------------------------- reading artefacts back


def _run_dir(path: str | Path | RunDir) -> RunDir:
    return path if isinstance(path, RunDir) else RunDir(Path(path))


def _number(v, low: float = -math.inf, high: float = math.inf) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high


def _accuracies(v) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(_number(a, 0, 1) for a in v)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# summary.json: key → (check, what it must be): the numbers every reader of a summary uses.
# Other keys are checked when present (SUMMARY_OPTIONAL); keys added by newer code are allowed.
SUMMARY_FIELDS = {
    "final_average_accuracy": (lambda v: _number(v, 0, 1), "a finite number in [0, 1]"),
    "forgetting": (lambda v: _number(v, -1, 1), "a finite number in [-1, 1]"),
    "backward_transfer": (lambda v: _number(v, -1, 1), "a finite number in [-1, 1]"),
    "final_task_aware_accuracy": (lambda v: _number(v, 0, 1), "a finite number in [0, 1]"),
    "final_task_accuracy": (_accuracies, "a non-empty list of finite numbers in [0, 1]"),
    "seconds_per_epoch": (lambda v: _number(v, 0), "a finite number >= 0"),
}
SUMMARY_OPTIONAL = {
    **{key: (lambda v: isinstance(v, str), "text") for key in ("name", "stamp", "config_id", "model", "regularizer", "dataset", "data_content",
                                                                  "init_from_content")},
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "epochs": (_count, "an integer >= 0"),
    "steps": (_count, "an integer >= 0"),
}
# metrics.jsonl: the keys every evaluation line has
METRICS_FIELDS = {
    "task": (_count, "an integer >= 0"),
    "epoch": (_count, "an integer >= 0"),
    "seen_average_accuracy": (lambda v: _number(v, 0, 1), "a finite number in [0, 1]"),
    "task_accuracy": (_accuracies, "a non-empty list of finite numbers in [0, 1]"),
}


# values some records carry, checked when present (None: not measured for this model)
OPTIONAL_NUMBERS = ("train_loss", "fraction_dead", "active_per_input", "gaba_switched", "average_incremental_accuracy",
                    "learning_accuracy", "train_seconds")


def _shown(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:39] + "…"


def _field_problem(entry: Any, fields: dict, optional: dict = {}) -> str | None:
    if not isinstance(entry, dict):
        return f"expected a JSON object, found {type(entry).__name__}"
    for key, (ok, what) in fields.items():
        if key not in entry:
            return f"no {key!r}; the file is incomplete"
        if not ok(entry[key]):
            return f"{key} is {_shown(entry[key])}, not {what}"
    for key, (ok, what) in optional.items():
        if entry.get(key) is not None and not ok(entry[key]):
            return f"{key} is {_shown(entry[key])}, not {what}"
    for key in OPTIONAL_NUMBERS:
        if entry.get(key) is not None and not _number(entry[key]):
            return f"{key} is {_shown(entry[key])}, not a finite number"
    return None


def evaluation_problem(entry: Any) -> str | None:
    """What is wrong with one evaluation record (a metrics.jsonl line, a checkpoint's history entry)."""
    return _field_problem(entry, METRICS_FIELDS)


def _read_json_text(path: Path, what: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: not found; {what}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: corrupt (not UTF-8 text at byte {e.start}); {what}") from None


def read_summary(path: str | Path | RunDir) -> dict:
    """The validated summary.json of a finished run (`path`: the run directory)."""
    rd = _run_dir(path)
    p = rd.summary_path
    fix = (f"delete it and run `sdmcl run --resume {rd.path}` to write it again from the last checkpoint"
           if rd.has_checkpoint() else "delete the run directory and run the config again")
    text = _read_json_text(p, "the run is unfinished or this is not a run directory")
    try:
        summary = json.loads(text)
    except ValueError as e:
        where = "empty file" if not text.strip() else f"line {e.lineno}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise UserError(f"{p}: not valid JSON ({where}); the file is damaged: {fix}") from None
    problem = _field_problem(summary, SUMMARY_FIELDS, SUMMARY_OPTIONAL)
    if problem:
        raise UserError(f"{p}: {problem}; the file is damaged: {fix}")
    return summary


def read_metrics(path: str | Path | RunDir) -> list[dict]:
    """The validated evaluations of metrics.jsonl, in order (`path`: the run directory)."""
    p = _run_dir(path).metrics_path
    text = _read_json_text(p, "the run has not evaluated yet or this is not a run directory")
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as e:
            where = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
            raise UserError(f"{p}:{n}: not valid JSON ({where}); the file is damaged") from None
        problem = evaluation_problem(entry)
        if problem:
            raise UserError(f"{p}:{n}: {problem}; the file is damaged")
        entries.append(entry)
    return entries


def read_run_config_dict(path: str | Path | RunDir) -> dict:
    """The run directory's config.yaml as plain data (strict YAML)."""
    rd = _run_dir(path)
    if not rd.config_path.is_file():
        raise UserError(f"{rd.path}: not a run directory (no config.yaml); give a directory printed by `sdmcl run`")
    raw = load_yaml_file(rd.config_path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{rd.config_path}: corrupt (holds {'nothing' if raw is None else 'a ' + type(raw).__name__}, "
                          "not the run's config); restore it or delete the run directory")
    return raw


def read_run_config(path: str | Path | RunDir) -> RunConfig:
    """The validated config of a run directory; problems name its config.yaml."""
    rd = _run_dir(path)
    raw = read_run_config_dict(rd)
    try:
        return parse_config(raw)
    except ConfigError as e:
        raise ConfigError(f"{rd.config_path}: {e}") from None


def config_edit_problem(path: str | Path | RunDir, summary: dict) -> str | None:
    """Why the run's config.yaml no longer describes its results (edited after the run), or
    None. Runs whose summary predates `config_id` are not checked."""
    from sdmcl.config import config_id

    recorded = summary.get("config_id")
    if recorded is None:
        return None
    rd = _run_dir(path)
    try:
        now = config_id(read_run_config(rd).to_dict())
    except UserError as e:
        return str(e)
    if now == recorded:
        return None
    return (f"{rd.config_path} does not match the config that made the results in {rd.summary_path} (config.yaml "
            "was edited after the run, or summary.json damaged): restore the file, or train the edited config as a "
            "new run: sdmcl run CONFIG")


def _listed(changed: list[tuple[str, Any, Any]], first: str, second: str, limit: int = 6) -> str:
    """'key (a <first>, b <second>); ...' for the first `limit` changed keys."""
    shown = "; ".join(f"{k} ({a!r} {first}, {b!r} {second})" for k, a, b in changed[:limit])
    return shown + (f"; and {len(changed) - limit} more" if len(changed) > limit else "")


def read_resume_checkpoint(rd: RunDir, cfg: RunConfig, map_location="cpu") -> dict:
    """The run's checkpoint, checked against the config the run resumes with: any key that
    changes results must be as it was when the run started."""
    from sdmcl.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(rd.checkpoint_path, map_location=map_location)
    if "position" not in ckpt:
        raise CheckpointError(f"{rd.checkpoint_path}: not a resumable checkpoint (no training position); delete it to start over")
    changed = result_differences(ckpt["config"], cfg.to_dict())
    if changed:
        raise ConfigError(f"{rd.config_path}: differs from the config the run started with (recorded in {rd.checkpoint_path.name}): "
                          f"{_listed(changed, 'when the run started', 'now')}. A run resumes with the config it started with: "
                          f"restore those values, or start a new run with them: sdmcl run {rd.config_path}")
    return ckpt


def config_for_resume(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """The config a run directory continues with: its own config.yaml, checked, with
    `overrides` of keys that do not change results (train.threads, output.progress, ...)
    applied. An override that would change results is refused, naming each key with both
    values and how to start a new run instead."""
    rd = RunDir(Path(path))
    if not rd.path.is_dir():
        raise UserError(f"{path}: no such run directory; give a directory printed by `sdmcl run`")
    rd.raise_if_in_use()
    raw = read_run_config_dict(rd)
    cfg = read_run_config(rd)
    if overrides:
        parsed = [parse_override(o) for o in overrides]
        for key, _ in parsed:
            if key.split(".")[0] in ("seeds", "variants") or key == "output.dir" or key == "output":
                raise ConfigError(f"{key}: cannot be set when resuming; a resumed run stays in {rd.path} with its own seed"
                                  + ("; move the directory to move the run" if key.startswith("output") else ""))
        changed_raw = json.loads(json.dumps(raw))
        for key, value in parsed:
            set_dotted(changed_raw, key, value)
        new = parse_config(changed_raw)
        changed = result_differences(cfg.to_dict(), new.to_dict())
        if changed:
            listed = _listed(changed, "in the run", "given")
            raise ConfigError(f"--resume {rd.path}: a resumed run keeps its config, these overrides would change it: {listed}. "
                              f"To train with them, start a new run: sdmcl run {rd.config_path} {' '.join(overrides)}")
        cfg = new
    cfg.output.dir = str(rd.path.parent)  # where the run lives now (it may have been moved)
    return cfg

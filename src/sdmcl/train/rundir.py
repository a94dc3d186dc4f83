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
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
from pathlib import Path

import yaml

from sdmcl.config import RunConfig
from sdmcl.errors import OutputError
from sdmcl.train.checkpoint import atomic_write_bytes


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
        self.write_text(self.config_path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def write_text(self, path: Path, text: str) -> None:
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

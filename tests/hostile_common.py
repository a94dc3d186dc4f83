"""Helpers of the hostile-input tests: a tiny valid config, the CLI run in-process with its
output captured, and the outcome property every hostile input must satisfy."""

from __future__ import annotations

import contextlib
import hashlib
import io
import multiprocessing as mp
import re
from pathlib import Path

import torch
import yaml

from sdmcl.cli import main

# the smallest real run: digits, 2 tasks, 1 epoch, 16 neurons (well under a second)
TINY = {
    "name": "tiny",
    "data": {"source": "digits"},
    "benchmark": {"num_tasks": 2},
    "model": {"name": "sdmlp", "neurons": 16, "k": 2, "gaba_switch_activations": 300},
    "train": {"epochs_per_task": 1, "batch_size": 64, "eval_every": 0, "threads": 1},
    "output": {"plots": False, "progress": False},
}


def tiny(out_dir: Path, **sections) -> dict:
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["output"]["dir"] = str(out_dir)
    for sec, values in sections.items():
        if isinstance(values, dict) and isinstance(cfg.get(sec), dict):
            cfg[sec].update(values)
        else:
            cfg[sec] = values
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cli(*args) -> tuple[int, str, str]:
    """`sdmcl ARGS` in this process: (exit code, stdout, stderr). An exception escaping main
    (a traceback for the user) propagates and fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse usage errors
            code = e.code if isinstance(e.code, int) else 2
        finally:
            torch.set_num_threads(1)  # a config may have changed it; keep the suite frugal
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (to prove earlier results are untouched)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def summaries(root: Path) -> set[Path]:
    return set(root.rglob("summary.json")) if root.exists() else set()


# what a one-line error must name: a dotted config key, a key of a known section, or a path
NAMES = re.compile(r"(/|\b(name|seed|init_from|seeds|variants|data|benchmark|model|optim|train|regularizer|output)\b|--out|--resume)")


def assert_clean_outcome(code: int, out: str, err: str, summaries_before: set[Path], summaries_after: set[Path]) -> None:
    """Exit 0 with a finished run, or exit 2/3 with one stderr line naming the key or file;
    never a traceback, never a summary.json for a failed run."""
    assert "Traceback" not in err and "Traceback" not in out, err
    if code == 0:
        assert summaries_after, "exit 0 without a finished run"
        return
    assert code in (2, 3), (code, err)
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("sdmcl: error: "), err
    assert NAMES.search(lines[0]), f"the message names no key or file: {lines[0]}"
    assert summaries_after == summaries_before, "a failed run left a summary.json"


@contextlib.contextmanager
def lock_held_elsewhere(rd, inside=None):
    """A forked process takes `rd`'s lock (then calls `inside()`, e.g. to create the run
    directory) and holds it until the block ends; yields that process's pid."""
    ready, release = mp.Event(), mp.Event()

    def hold():
        with rd.locked():
            if inside is not None:
                inside()
            ready.set()
            release.wait(30)

    holder = mp.get_context("fork").Process(target=hold)
    holder.start()
    try:
        assert ready.wait(30)
        yield holder.pid
    finally:
        release.set()
        holder.join()

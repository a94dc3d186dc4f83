"""Where a run's numbers came from: code version, libraries, machine, command, times.

Every training session of a run (the first, and each resume) appends one record to the run
directory's `provenance.json`:

    {"sessions": [{"sdmcl_version", "git_commit", "git_dirty", "source_diff_sha256",
                   "torch", "numpy", "python", "platform", "host", "command",
                   "start", "end", "status"}, ...]}

`status` is `running` while it trains, then `finished`, `stopped` (signal; resumable) or
`diverged`. summary.json holds the record of the session that finished the run, with the
start of the first session.

`git_commit` and `git_dirty` are filled when sdmcl is imported from a git checkout (an
editable install); `git_dirty` means uncommitted changes to the package source (`src/`), and
`source_diff_sha256` tells two dirty states apart. A finished run whose code identity differs
from the running code is still reused, with a note saying so (`--rerun` trains it again).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

FILE_NAME = "provenance.json"
_command: str | None = None  # the launcher's command line, when this process is its worker
CODE_KEYS = ("sdmcl_version", "git_commit", "git_dirty", "source_diff_sha256")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="replace")


def git_state(root: Path) -> dict:
    """{git_commit, git_dirty, source_diff_sha256} of the checkout at `root` (empty if it is none)."""
    if not (root / ".git").exists():
        return {}
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return {}
    status = _git(root, "status", "--porcelain", "--untracked-files=all", "--", "src") or ""
    state = {"git_commit": commit.strip(), "git_dirty": bool(status.strip()), "source_diff_sha256": None}
    if state["git_dirty"]:
        # the tracked changes, and the names and bytes of untracked source files
        h = hashlib.sha256((_git(root, "diff", "HEAD", "--", "src") or "").encode())
        for line in sorted(status.splitlines()):
            if line.startswith("?? ") and (root / line[3:]).is_file():
                h.update(line[3:].encode() + b"\0" + (root / line[3:]).read_bytes())
        state["source_diff_sha256"] = h.hexdigest()[:16]
    return state


@functools.lru_cache(maxsize=1)
def code_identity() -> dict:
    """The running sdmcl: version, and the git state of its checkout if it is imported from one."""
    import sdmcl

    ident = {"sdmcl_version": sdmcl.__version__, "git_commit": None, "git_dirty": None, "source_diff_sha256": None}
    package_root = Path(sdmcl.__file__).resolve().parents[2]  # <checkout>/src/sdmcl/__init__.py
    ident.update(git_state(package_root))
    return ident


def environment() -> dict:
    import numpy
    import torch

    return {
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "command": _command or shlex.join(sys.argv),
    }


def set_command(command: str | None) -> None:
    """Record `command` (the launcher's command line) instead of this process's own argv: a
    worker process or Ray task was started by something else than the user's command."""
    global _command
    _command = command


def session_record() -> dict:
    return {**code_identity(), **environment(), "start": now(), "end": None, "status": "running"}


def read(run_dir: Path) -> dict:
    try:
        data = json.loads((Path(run_dir) / FILE_NAME).read_text())
    except (OSError, ValueError):
        return {"sessions": []}
    if not isinstance(data, dict) or not isinstance(data.get("sessions"), list):
        return {"sessions": []}
    data["sessions"] = [s for s in data["sessions"] if isinstance(s, dict)]  # a damaged record is no record
    return data


class Session:
    """One training session of a run: recorded at its start, closed with its status."""

    def __init__(self, run_dir, fresh: bool):
        from sdmcl.train.checkpoint import atomic_write_bytes

        self._write = lambda data: atomic_write_bytes(self.path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))
        self.path = Path(run_dir) / FILE_NAME
        self.data = {"sessions": []} if fresh else read(run_dir)
        self.record = session_record()
        self.data["sessions"].append(self.record)
        self._write(self.data)

    def close(self, status: str) -> dict:
        self.record.update(end=now(), status=status)
        self._write(self.data)
        return self.summary()

    def summary(self) -> dict:
        """This session's record, with when the run first started and how many sessions it took."""
        return {**self.record, "first_start": self.data["sessions"][0]["start"], "sessions": len(self.data["sessions"])}


def _describe(ident: dict) -> str:
    text = f"sdmcl {ident.get('sdmcl_version') or '?'}"
    if ident.get("git_commit"):
        text += f" at commit {ident['git_commit'][:10]}" + (" with uncommitted changes" if ident.get("git_dirty") else "")
    return text


def reuse_note(run_dir: Path) -> str | None:
    """Why the finished run in `run_dir` may not be what the running code would compute (None if
    every session that trained it ran this very code)."""
    sessions = read(run_dir)["sessions"]
    if not sessions:
        return "it records no provenance (made by an older sdmcl)"
    current = code_identity()
    others = [s for s in sessions if any(s.get(k) != current.get(k) for k in CODE_KEYS)]
    if not others:
        return None
    return f"it was made by {_describe(others[-1])}; this is {_describe(current)}"

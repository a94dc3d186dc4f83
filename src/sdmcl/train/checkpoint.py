"""Checkpoints: atomic writes, and files that carry their config.

A checkpoint is a dict saved with `torch.save`: `format`, `config` (the resolved run
config as plain data), `model`, `epochs_trained` (the model's epochs, pretraining
included: an `init_from` run continues its k schedule from there) and, for resumable
checkpoints, `optimizer`, `regularizer`, `position` and `history`. It is written to a temporary file in the same
directory, flushed and fsync'ed, then renamed over the old one, so a crash at any moment
leaves the previous good checkpoint intact.

Reading one back checks it: the CRC of every record of the archive (torch.load does not,
so a flipped byte in the weights would load silently), unpickling of plain data and
tensors only (`weights_only`: a tampered file cannot run code), the structure, and that
every float tensor is finite. Any problem is a `CheckpointError` naming the file.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import torch

from sdmcl.errors import CheckpointError, OutputError

FORMAT = 1


def atomic_write_bytes(path: Path, write, before_replace=None) -> None:
    """Call `write(fileobj)` on a temp file next to `path`, fsync, then rename over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: could not write ({e.strerror or e}); free disk space or choose another output.dir") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_checkpoint(path: Path, payload: dict, before_replace=None) -> None:
    payload = {"format": FORMAT, **payload}
    atomic_write_bytes(path, lambda f: torch.save(payload, f), before_replace)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    p = Path(path)
    try:
        p.stat()
    except FileNotFoundError:
        pass  # reported below
    except OSError as e:  # too long a name, no permission, a loop of links
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e}); give the path of a checkpoint or a run directory") from None
    p = checkpoint_file(path)
    fix = "it is truncated, damaged or not an sdmcl checkpoint — delete it or use an earlier one"
    damaged = _damaged_record(p)
    if damaged:
        raise CheckpointError(f"{p}: unreadable checkpoint ({damaged}); {fix}")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # any failure to unpickle means the bytes are not a checkpoint
        msg = " ".join(str(e).split())[:120] or type(e).__name__
        raise CheckpointError(f"{p}: unreadable checkpoint ({type(e).__name__}: {msg}); {fix}") from None
    problem = checkpoint_problem(ckpt)
    if problem:
        raise CheckpointError(f"{p}: not a valid sdmcl checkpoint (format {FORMAT}): {problem}; {fix}")
    return ckpt


def checkpoint_file(path: str | Path) -> Path:
    """The file a checkpoint path names: the file itself, or a run directory's model.pt
    (else its checkpoints/last.pt)."""
    p = Path(path)
    if p.is_dir():
        for candidate in (p / "model.pt", p / "checkpoints" / "last.pt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: no model.pt or checkpoints/last.pt in this directory; point to a checkpoint file or a finished run")
    if not p.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    return p


_content_memo: dict[str, str] = {}


def weights_content_id(ckpt: dict) -> str:
    """sha256 (16 hex digits) of what a model checkpoint holds for a run that starts from it:
    every tensor of its state (name, dtype, shape, bytes) and the epochs it was trained (the
    position of its k schedule). Not the file's bytes: the same weights saved by runs that
    differ only in where they wrote their outputs are the same start."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(ckpt["model"]):
        t = ckpt["model"][name].detach().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(f"epochs_trained|{ckpt.get('epochs_trained', 0)}".encode())
    return h.hexdigest()[:16]


def checkpoint_content_id(path: str | Path) -> str | None:
    """`weights_content_id` of the checkpoint `path` names (a run directory: its model.pt);
    None when there is none or it cannot be read. What a run started from (`init_from`): its
    path may stay the same while the file is replaced (a pretraining run trained again), or
    move. Remembered per file (real path, size, mtime, inode) for the process."""
    try:
        file = checkpoint_file(path)
        st = file.stat()
        key = f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        if key not in _content_memo:
            _content_memo[key] = weights_content_id(load_checkpoint(file))
        return _content_memo[key]
    except (CheckpointError, OSError):
        return None


def _damaged_record(path: Path) -> str | None:
    """The first record of the checkpoint archive whose CRC does not match, if any."""
    try:
        if not zipfile.is_zipfile(path):
            return None  # not an archive: torch.load reports it
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, zlib.error) as e:
        return f"damaged archive: {type(e).__name__}"
    return f"record {bad} fails its CRC check" if bad else None


def _non_finite(obj, where: str) -> str | None:
    """Dotted path of the first float tensor (or float) holding nan/inf in a nested payload."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel() and not bool(torch.isfinite(obj).all()):
            return where
    elif isinstance(obj, float):
        return None if math.isfinite(obj) else where
    elif isinstance(obj, dict):
        for k, v in obj.items():
            found = _non_finite(v, f"{where}.{k}")
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _non_finite(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


POSITION_INTS = ("next_task", "next_epoch_in_task", "epochs_done", "steps_done")


def checkpoint_problem(ckpt) -> str | None:
    """What is wrong with a loaded checkpoint's structure, or None. A resumable checkpoint
    (with `position`) is checked in full; `model.pt` has the config, sizes and weights."""
    if not isinstance(ckpt, dict):
        return f"holds a {type(ckpt).__name__}, not a dict"
    if ckpt.get("format") != FORMAT:
        return f"format {ckpt.get('format')!r}"
    if not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt["config"].get("model"), dict):
        return "the config is missing or not a mapping"
    for key in ("num_classes", "input_dim"):
        if key in ckpt and not (_is_int(ckpt[key]) and ckpt[key] >= 1):
            return f"{key} is {ckpt[key]!r}, not a positive integer"
    if "epochs_trained" in ckpt and not (_is_int(ckpt["epochs_trained"]) and ckpt["epochs_trained"] >= 0):
        return f"epochs_trained is {ckpt['epochs_trained']!r}, not an integer >= 0"
    shape = ckpt.get("input_shape")
    if shape is not None and not (isinstance(shape, (list, tuple)) and shape and all(_is_int(n) and n >= 1 for n in shape)):
        return f"input_shape is {shape!r}, not a list of positive sizes"
    model = ckpt.get("model")
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        return "the model weights are missing or not a mapping of names to tensors"
    if "position" in ckpt:
        pos = ckpt["position"]
        if not isinstance(pos, dict):
            return "position is not a mapping"
        for key in POSITION_INTS:
            if not (_is_int(pos.get(key)) and pos[key] >= 0):
                return f"position.{key} is {pos.get(key)!r}, not an integer >= 0"
        secs = pos.get("train_seconds")
        if not (isinstance(secs, (int, float)) and not isinstance(secs, bool) and math.isfinite(secs) and secs >= 0):
            return f"position.train_seconds is {secs!r}"
        if not (isinstance(pos.get("history"), list) and all(isinstance(h, dict) for h in pos["history"])):
            return "position.history is not a list of evaluations"
        for key in ("R", "R_task_aware"):
            rows = pos.get(key)
            if not (isinstance(rows, list) and all(isinstance(r, list) and all(isinstance(a, float) and 0 <= a <= 1 for a in r)
                                                   for r in rows)):
                return f"position.{key} is not a matrix of accuracies in [0, 1]"
        warnings = pos.get("warnings", [])
        if not (isinstance(warnings, list) and all(isinstance(w, str) for w in warnings)):
            return "position.warnings is not a list of lines"
        if not isinstance(pos.get("init_from_content"), (str, type(None))):
            return "position.init_from_content is not a hash"
        for key in ("optimizer", "regularizer", "callbacks", "grad_scaler"):
            if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
                return f"{key} state is a {type(ckpt[key]).__name__}, not a mapping"
    for key in ("model", "optimizer", "regularizer", "callbacks"):
        found = _non_finite(ckpt.get(key), key)
        if found:
            return f"{found} holds nan or inf"
    return None


def config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key} ({va!r} vs {vb!r})")
    return out


def load_weights(model: torch.nn.Module, state: dict) -> None:
    """`model.load_state_dict(state)`, except that buffers a module lists in its
    `optional_buffers` (statistics added to sdmcl after some checkpoints were written, which
    start from zero) may be missing: they keep their fresh values. Anything else that does
    not fit raises, as `load_state_dict` does."""
    optional = {f"{prefix}.{name}" if prefix else name
                for prefix, module in model.named_modules() for name in getattr(module, "optional_buffers", ())}
    missing = [key for key in model.state_dict() if key not in state]
    if missing and set(missing) <= optional:
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise RuntimeError(f"unexpected key(s) in state_dict: {', '.join(result.unexpected_keys)}")
        return
    model.load_state_dict(state)


def load_model(path: str | Path, map_location="cpu") -> torch.nn.Module:
    """The model of a checkpoint or finished run directory (its `model.pt`), rebuilt from the
    config the file carries, weights loaded, in eval mode. An image model's `embed(x)` then
    gives its features (models/base.py)."""
    from sdmcl.config import parse_config
    from sdmcl.registry import build_model

    ckpt = load_checkpoint(path, map_location=map_location)
    cfg = parse_config(ckpt["config"])
    model = build_model(cfg.model, ckpt["input_dim"], ckpt["num_classes"], ckpt.get("input_shape"))
    try:
        load_weights(model, ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({str(e).splitlines()[0]})") from None
    return model.to(map_location).eval()

"""Checkpoints: atomic writes, and files that carry their config.

A checkpoint is a dict saved with `torch.save`: `format`, `config` (the resolved run
config as plain data), `model`, `epochs_trained` (the model's epochs, pretraining
included: an `init_from` run continues its k schedule from there) and, for resumable
checkpoints, `optimizer`, `regularizer`, `position` and `history`. It is written to a temporary file in the same
directory, flushed and fsync'ed, then renamed over the old one, so a crash at any moment
leaves the previous good checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import zipfile
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
    if p.is_dir():
        for candidate in (p / "model.pt", p / "checkpoints" / "last.pt"):
            if candidate.is_file():
                p = candidate
                break
        else:
            raise CheckpointError(f"{path}: no model.pt or checkpoints/last.pt in this directory; point to a checkpoint file or a finished run")
    if not p.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{p}: unreadable checkpoint ({msg}); it is truncated or not an sdmcl checkpoint — delete it or use an earlier one") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{p}: not an sdmcl checkpoint (format {FORMAT}); it lacks the config or the model")
    return ckpt


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
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({str(e).splitlines()[0]})") from None
    return model.to(map_location).eval()

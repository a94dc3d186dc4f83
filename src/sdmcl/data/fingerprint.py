"""What a run's data *is*, for the run stamp, independent of where the files lie.

MNIST, Fashion-MNIST and CIFAR files are checked against pinned official checksums on every
load, and scikit-learn's digits ship inside the package: for these the source name (already in
the config) identifies the content, and `data.path` may point anywhere. Files only the user
has (embeddings, or any source read from `data.path` without pinned checksums) are identified
by the sha256 of their bytes.

Hashing a multi-GB embedding file on every run would cost more than some runs, so a file's
hash is remembered per (real path, size, mtime, inode): in memory for the process, and in
`content-hashes.json` in the data cache directory across processes (a best-effort cache: a
file that changed in any of these gets hashed again; a cache that cannot be written is skipped).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from sdmcl.errors import DataError

CACHE_NAME = "content-hashes.json"
_memo: dict[str, str] = {}


def _pinned(source: str) -> bool:
    from sdmcl.data.sources import CIFAR_MD5, IDX_SHA256

    return source in IDX_SHA256 or source in CIFAR_MD5 or source == "digits"


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


def _cache_file(data_dir: str | None) -> Path:
    from sdmcl.data.sources import cache_dir

    return cache_dir(data_dir) / CACHE_NAME


def _read_cache(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(file: Path, entries: dict) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_read_cache(file), **entries}  # other processes may have added theirs
        tmp = file.with_name(f".{file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(merged, indent=0, sort_keys=True))
        os.replace(tmp, file)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path, data_dir: str | None = None) -> str:
    """sha256 of a file's bytes, remembered per (real path, size, mtime, inode)."""
    key = _file_key(path)
    if key in _memo:
        return _memo[key]
    cache = _cache_file(data_dir)
    digest = _read_cache(cache).get(key)
    if not isinstance(digest, str):
        digest = _hash_file(path)
        _write_cache(cache, {key: digest})
    _memo[key] = digest
    return digest


def _files_read(source: str, root: Path) -> list[tuple[str, Path]]:
    """(role, file) for each file the source reads under `root`. The role is what the loader
    takes the file for (a copy under another name is the same data), or, for a directory of
    some other source, the file's name."""
    if root.is_file():
        return [("file", root)]
    if not root.is_dir():
        raise DataError(f"{source}: data.path {root} does not exist; set data.path to the directory or file holding the data")
    if source == "embeddings":
        from sdmcl.data.sources import EMBEDDING_PAIRS

        for a, b in EMBEDDING_PAIRS:
            if (root / a).is_file() or (root / b).is_file():
                return [(role, p) for role, p in (("train", root / a), ("test", root / b)) if p.is_file()]
    if source == "imagenet32":  # the release's files, found in root or one level below it
        from sdmcl.data.imagenet32 import locate

        train, test, _ = locate(root)
        return [(p.name.removesuffix(".npz"), p) for p in train] + ([("val_data", test)] if test else [])
    return [(p.name, p) for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")]


def content_id(source: str, path: str | None, data_dir: str | None = None) -> str | None:
    """sha256 over the names and contents of the user's data files; None when the source's
    content is pinned (official checksums, or bundled) or no path is given."""
    if path is None or _pinned(source):
        return None
    root = Path(path).expanduser()
    h = hashlib.sha256()
    for role, f in _files_read(source, root):
        h.update(f"{role}:{file_sha256(f, data_dir)}\n".encode())
    return h.hexdigest()[:16]

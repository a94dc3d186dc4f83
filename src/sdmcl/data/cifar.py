"""Reader for the "python version" of CIFAR-10 and CIFAR-100 (https://www.cs.toronto.edu/~kriz/cifar.html).

Each batch file is a pickled dict (written by Python 2) with `b"data"`, a uint8 array of
shape (N, 3072) holding the red, green and blue 32×32 planes of each image in that order,
and the labels: `b"labels"` (CIFAR-10) or `b"fine_labels"` (CIFAR-100, 100 classes).
The batches are read either from the extracted directory (`cifar-10-batches-py/`,
`cifar-100-python/`) or straight from the published `.tar.gz`, without writing to disk.
Unpickling accepts only the few numpy globals an array needs, so a tampered batch cannot
run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdmcl.errors import DataError, one_line


@dataclass(frozen=True)
class CifarLayout:
    name: str
    archive: str  # the published archive's file name
    folder: str  # the folder the archive extracts to
    train: tuple[str, ...]  # batch files, in order
    test: tuple[str, ...]
    label_key: bytes
    num_classes: int


CIFAR10 = CifarLayout(
    name="cifar10",
    archive="cifar-10-python.tar.gz",
    folder="cifar-10-batches-py",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test=("test_batch",),
    label_key=b"labels",
    num_classes=10,
)
CIFAR100 = CifarLayout(
    name="cifar100",
    archive="cifar-100-python.tar.gz",
    folder="cifar-100-python",
    train=("train",),
    test=("test",),
    label_key=b"fine_labels",
    num_classes=100,
)

# The only globals a pickled numpy array needs (numpy 1 and numpy 2 module names).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol < 3
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def parse_batch(raw: bytes, label_key: bytes, num_classes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pickled batch into images (N, 3, 32, 32) uint8 and labels (N,) int64.

    `where` names the file (or archive member) in error messages.
    """
    hint = "the file is truncated or corrupt: delete it and download or copy it again"
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # any failure to unpickle means the bytes are not a batch
        raise DataError(f"{where}: not a readable CIFAR batch ({one_line(err)}); {hint}") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DataError(f"{where}: lacks the {b'data'!r} / {label_key!r} entries of a CIFAR batch; {hint}")
    data, labels = batch[b"data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        raise DataError(f"{where}: images are {type(data).__name__} {shape}, not uint8 (N, 3072); {hint}")
    try:
        labels = np.asarray(labels)
    except Exception as err:  # ragged or odd objects
        raise DataError(f"{where}: labels are not an array ({type(err).__name__}); {hint}") from None
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels are {labels.dtype}, not integer class ids; {hint}")
    labels = labels.astype(np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"{where}: {len(data)} images but labels of shape {labels.shape}; {hint}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: labels outside 0..{num_classes - 1}; {hint}")
    return data.reshape(-1, 3, 32, 32), labels


def batch_dir(root: Path, layout: CifarLayout) -> Path | None:
    """The directory holding the batch files, if `root` is it or contains it."""
    for folder in (root / layout.folder, root):
        if all((folder / f).is_file() for f in layout.train + layout.test):
            return folder
    return None


def read_members_from_dir(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    out = {}
    for name in names:
        try:
            out[name] = (folder / name).read_bytes()
        except OSError as err:
            raise DataError(f"{folder / name}: cannot be read ({err.strerror or err}); check the file") from None
    return out


def read_members_from_archive(archive: Path, layout: CifarLayout, names: tuple[str, ...]) -> dict[str, bytes]:
    """The bytes of the batch files `names`, read in one pass over the `.tar.gz` archive."""
    wanted = {f"{layout.folder}/{n}": n for n in names}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, mode="r|gz") as tar:  # stream mode: one sequential pass
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is not None and member.isfile():
                    out[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{archive}: the archive is truncated or corrupt ({err}); delete it and download or copy it again"
        ) from None
    missing = [n for n in names if n not in out]
    if missing:
        raise DataError(f"{archive}: the archive lacks {', '.join(layout.folder + '/' + n for n in missing)}; "
                        f"it is not the official {layout.archive}: delete it and download it again")
    return out


def assemble(members: dict[str, bytes], layout: CifarLayout, prefix: str) -> tuple[np.ndarray, ...]:
    """(train_x, train_y, test_x, test_y) from the raw batch files, train batches in order.

    `prefix + name` names a batch in error messages (a folder path, or `archive.tar.gz:folder/`).
    """
    parts = {}
    for split, names in (("train", layout.train), ("test", layout.test)):
        decoded = [parse_batch(members[n], layout.label_key, layout.num_classes, prefix + n) for n in names]
        parts[split] = (np.concatenate([d[0] for d in decoded]), np.concatenate([d[1] for d in decoded]))
    return (*parts["train"], *parts["test"])

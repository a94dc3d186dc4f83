"""Reader for ImageNet32, the 32×32 downsampled ImageNet of Chrabaszcz, Loshchilov & Hutter
(2017, "A Downsampled Variant of ImageNet as an Alternative to the CIFAR datasets"), as
released on image-net.org (an account is needed; nothing is downloaded here).

The release is ten training files `train_data_batch_1` … `train_data_batch_10` (1,281,167
images) and one validation file `val_data` (50,000 images, the test split here), each a
pickled dict with `data`, uint8 (N, 3072) in CIFAR's layout (the 32×32 red, green and blue
planes of each image in that order), and `labels`, class ids 1..1000 (the training files
also hold `mean`). The same files come as `.npz` archives with arrays `data` and `labels`.
Labels are mapped to 0..999. The reference renamed the validation file `test_data`; that
name is accepted too. Unpickling accepts only the globals a numpy array needs (as for
CIFAR), so a tampered file cannot run code.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from sdmcl.data.cifar import _BatchUnpickler as SafeUnpickler
from sdmcl.errors import DataError, one_line

TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
TEST_FILES = ("val_data", "test_data")  # the release's name; the reference's
NUM_CLASSES = 1000
SIDE = 32
HINT = "the file is truncated or corrupt: copy it again from the downsampled-ImageNet release"


def _candidates(folder: Path, stem: str) -> list[Path]:
    return [folder / stem, folder / (stem + ".npz")]


def locate(root: Path) -> tuple[list[Path], Path | None, list[str]]:
    """(training files in order, the test file, names not found). Each file is looked for in
    `root` and in its immediate subdirectories (the release unpacks into `Imagenet32_train/`
    and `Imagenet32_val/`), as a pickle or as `.npz`."""
    folders = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])

    def find(stem: str) -> Path | None:
        for folder in folders:
            for path in _candidates(folder, stem):
                if path.is_file():
                    return path
        return None

    train = [find(stem) for stem in TRAIN_FILES]
    test = next((p for p in map(find, TEST_FILES) if p is not None), None)
    missing = [stem for stem, p in zip(TRAIN_FILES, train) if p is None] + ([] if test else [TEST_FILES[0]])
    return [p for p in train if p is not None], test, missing


def _entry(content, key: str):
    for k in (key, key.encode()):
        if k in content:
            return content[k]
    return None


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One file as images uint8 (N, 3, 32, 32) and labels int64 (N,) in 0..999."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                content = {k: npz[k] for k in npz.files}
        else:
            content = SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err}); check the file") from None
    except Exception as err:  # any failure to decode means the bytes are not a batch
        raise DataError(f"{path}: not a readable ImageNet32 batch ({one_line(err)}); {HINT}") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: holds a {type(content).__name__}, not the dict of an ImageNet32 batch; {HINT}")
    data, labels = _entry(content, "data"), _entry(content, "labels")
    if data is None or labels is None:
        raise DataError(f"{path}: lacks the 'data' / 'labels' entries of an ImageNet32 batch; {HINT}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise DataError(f"{path}: images are {type(data).__name__} {getattr(data, 'shape', None)}, not uint8 (N, 3072); "
                        "this reader takes the 32x32 release (ImageNet32)")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: labels are not integers; {HINT}") from None
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but labels of shape {labels.shape}; {HINT}")
    if labels.size and (labels.min() < 1 or labels.max() > NUM_CLASSES):
        raise DataError(f"{path}: labels outside 1..{NUM_CLASSES} (found {int(labels.min())}..{int(labels.max())}); "
                        "it is not an ImageNet32 file")
    return data.reshape(-1, 3, SIDE, SIDE), labels - 1


def read_split(paths: list[Path], divide_by: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The files of one split concatenated as float32 images (divided by `divide_by`, e.g. 255
    for [0, 1]; None keeps 0..255) and int64 labels.

    The float array is allocated once and filled file by file, dropping each file's uint8
    copy after use: the 1,281,167 training images take 15.7 GB as float32, about 20 GB at
    the peak of loading."""
    parts = [read_batch(p) for p in paths]
    n = sum(len(labels) for _, labels in parts)
    x = np.empty((n, 3, SIDE, SIDE), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    at = 0
    for i in range(len(parts)):
        images, labels = parts[i]
        parts[i] = None
        m = len(labels)
        x[at : at + m] = images  # uint8 → float32 in place
        if divide_by is not None:
            x[at : at + m] /= np.float32(divide_by)
        y[at : at + m] = labels
        at += m
        del images
    return x, y

"""Data sources: where each data set comes from, how it is checked, and how it is loaded.

Every source is a `DataSource` object registered by name in `sdmcl.registry.DATA_SOURCES`
(`register_data_source`), like models and regularizers: a plugin adds its own without
editing sdmcl (docs/api.md). `load_dataset(source, path, data_dir, pixel_scale, download)`
asks the registered source for a `Dataset`. For the built-in sources: with
`path`, the files are read from that directory (the original files, as published); without
it, from the cache `data_dir` (default: $SDMCL_DATA_DIR, else ~/.cache/sdmcl), into which
missing files are downloaded with pooch from the official URLs.

Checksums (which hash pins what):
- MNIST, Fashion-MNIST: `IDX_SHA256` pins the sha256 of each IDX file's *decompressed*
  content, checked on every load, so the same data verifies whether it is gzipped, unzipped
  or recompressed by a mirror or a distribution (Debian recompresses Fashion-MNIST).
  A download is also checked by pooch against the md5 of the official `.gz` file.
- CIFAR-10/100: a download is checked by pooch against the sha256 of the official `.tar.gz`;
  every batch file, extracted or read from the archive, is checked on every load against the
  md5 of the official (uncompressed) batch file, `CIFAR_MD5` (the values torchvision uses too).
- digits ships inside scikit-learn; embeddings are the user's own files: nothing to pin.
- ImageNet32 is not downloadable without an image-net.org account and no checksums are pinned:
  every file's structure (dtype, shape, label range) is checked at load.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pooch

from sdmcl.data.cifar import CIFAR10, CIFAR100, CifarLayout, assemble, batch_dir
from sdmcl.data.cifar import read_members_from_archive, read_members_from_dir
from sdmcl.data.dataset import Dataset
from sdmcl.data.idx import parse_idx, read_idx_bytes
from sdmcl.data import imagenet32
from sdmcl.errors import ConfigError, DataError, one_line
from sdmcl.registry import DATA_SOURCES, register_data_source

PIXEL_SCALES = ("unit", "raw255")
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class RemoteFile:
    name: str  # the file name as published
    urls: tuple[str, ...]  # the official URL first, then mirrors serving the same bytes
    known_hash: str  # pooch's "md5:…" / "sha256:…" of the file as published (compressed)


@dataclass(eq=False)
class DataSource:
    """A data set sdmcl can load. Subclass it, implement `load`, and register an instance with
    `sdmcl.registry.register_data_source`; `data.source: <name>` then selects it.

    `files` (official downloads) and `system_dirs` (where an OS package installs them) are
    optional; `fetch` and `status` use them (`sdmcl data fetch`, `sdmcl data list`).
    """

    name: str = ""
    description: str = ""
    files: tuple[RemoteFile, ...] = ()
    # directories where an OS package installs the original files (checked before downloading)
    system_dirs: tuple[str, ...] = ()

    @property
    def urls(self) -> list[str]:
        return [f.urls[0] for f in self.files]

    def load(self, path: str | None = None, data_dir: str | None = None, pixel_scale: str = "unit",
             download: bool = True, checks: list[str] | None = None) -> Dataset:
        """The data as a `Dataset` (arguments as in `load_dataset`)."""
        raise NotImplementedError(f"data source {self.name!r} does not implement load()")

    def missing_files(self, folder: Path) -> list[RemoteFile]:
        """The official files not yet in `folder`."""
        return [f for f in self.files if not (folder / f.name).is_file()]

    def fetch(self, data_dir: str | None = None) -> Path:
        """Download the missing official files into the cache (checked by pooch); return the folder."""
        if not self.files:
            raise DataError(f"{self.name}: nothing to download ({self.description})")
        folder = cache_dir(data_dir) / self.name
        _download(self, folder, self.missing_files(folder))
        return folder

    def status(self, data_dir: str | None = None) -> str:
        """Where the files are, in a few words (`sdmcl data list`)."""
        if not self.files:
            return "loaded by its plugin"
        folder = cache_dir(data_dir) / self.name
        if not self.missing_files(folder):
            return f"cached in {folder}"
        for system_dir in map(Path, self.system_dirs):
            if not self.missing_files(system_dir):
                return f"installed in {system_dir} (used when the cache lacks it)"
        return f"not downloaded (would go to {folder})"


class IdxSource(DataSource):
    """MNIST-style IDX files (gzipped or not), checked by the sha256 of their content."""

    def load(self, path=None, data_dir=None, pixel_scale="unit", download=True, checks=None) -> Dataset:
        return _load_idx(self, path, data_dir, pixel_scale, download, checks)

    def missing_files(self, folder: Path) -> list[RemoteFile]:
        return [f for f, stem in zip(self.files, IDX_STEMS) if _find_idx(folder, stem) is None]


class CifarSource(DataSource):
    """The CIFAR python pickles, extracted or in their archive, checked by md5."""

    def load(self, path=None, data_dir=None, pixel_scale="unit", download=True, checks=None) -> Dataset:
        return _load_cifar(self, path, data_dir, pixel_scale, download, checks)

    def missing_files(self, folder: Path) -> list[RemoteFile]:
        if folder.is_dir() and batch_dir(folder, CIFAR_LAYOUTS[self.name]):
            return []  # already extracted there
        return super().missing_files(folder)


class DigitsSource(DataSource):
    def load(self, path=None, data_dir=None, pixel_scale="unit", download=True, checks=None) -> Dataset:
        return _load_digits(self, path, data_dir, pixel_scale, download, checks)

    def status(self, data_dir=None) -> str:
        return "bundled with scikit-learn"


class ImageNet32Source(DataSource):
    """Your copy of the downsampled-ImageNet release (data/imagenet32.py); never downloaded."""

    def load(self, path=None, data_dir=None, pixel_scale="unit", download=True, checks=None) -> Dataset:
        return _load_imagenet32(self, path, data_dir, pixel_scale, download, checks)

    def status(self, data_dir=None) -> str:
        folder = cache_dir(data_dir) / self.name
        if not imagenet32.locate(folder)[2]:
            return f"your copy, in {folder}"
        return f"not in {folder} (copy the release there, or set data.path)"


class EmbeddingsSource(DataSource):
    def load(self, path=None, data_dir=None, pixel_scale="unit", download=True, checks=None) -> Dataset:
        return _load_embeddings(self, path, data_dir, pixel_scale, download, checks)

    def status(self, data_dir=None) -> str:
        return "your files, given by data.path"


IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_FASHION_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
# md5 of the official .gz files (LeCun's MNIST page; Zalando's Fashion-MNIST README).
_MNIST_GZ_MD5 = ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                 "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")
_FASHION_GZ_MD5 = ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                   "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")

# sha256 of the decompressed IDX content (independent of the compression).
IDX_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

# md5 of each official batch file as extracted from the archive.
CIFAR_MD5 = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "cifar100": {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
}
CIFAR_LAYOUTS = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def _idx_files(mirrors: tuple[str, ...], md5s: tuple[str, ...]) -> tuple[RemoteFile, ...]:
    names = [stem + ".gz" for stem in IDX_STEMS]
    return tuple(RemoteFile(n, tuple(m + n for m in mirrors), "md5:" + md5) for n, md5 in zip(names, md5s))


for _source in (
    IdxSource("mnist", "MNIST handwritten digits, 28x28 grey, 10 classes, 60000/10000",
              _idx_files(_MNIST_MIRRORS, _MNIST_GZ_MD5)),
    IdxSource("fashion-mnist", "Fashion-MNIST clothing, 28x28 grey, 10 classes, 60000/10000",
              _idx_files(_FASHION_MIRRORS, _FASHION_GZ_MD5),
              system_dirs=("/usr/share/datasets/fashion-mnist",)),  # Debian: dataset-fashion-mnist
    CifarSource("cifar10", "CIFAR-10 photos, 3x32x32, 10 classes, 50000/10000", (
        RemoteFile(CIFAR10.archive, ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                   "sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),)),
    CifarSource("cifar100", "CIFAR-100 photos, 3x32x32, 100 fine classes, 50000/10000", (
        RemoteFile(CIFAR100.archive, ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                   "sha256:85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),)),
    DigitsSource("digits", "scikit-learn's bundled 8x8 digits (0..16), 10 classes, seeded 80/20 split"),
    ImageNet32Source("imagenet32", "downsampled ImageNet 3x32x32, 1000 classes, 1281167/50000 (your copy of "
                     "the image-net.org release, via data.path or the cache directory)"),
    EmbeddingsSource("embeddings", "your feature files (e.g. the authors' ConvMixer embeddings), via data.path"),
):
    register_data_source(_source)

# Every registered source, built-in and from plugins (the registry itself, under its older name).
SOURCES = DATA_SOURCES
SourceInfo = DataSource  # older name


def available_sources() -> list[str]:
    _load_plugins()
    return list(DATA_SOURCES)


def _load_plugins() -> None:
    from sdmcl.plugins import load_entry_points

    load_entry_points()


def cache_dir(data_dir: str | None = None) -> Path:
    """The download cache: `data_dir`, else $SDMCL_DATA_DIR, else ~/.cache/sdmcl."""
    return Path(data_dir or os.environ.get("SDMCL_DATA_DIR") or "~/.cache/sdmcl").expanduser()


def source_info(source: str) -> DataSource:
    """The registered source of that name (plugins from entry points included)."""
    _load_plugins()
    if source not in DATA_SOURCES:
        raise ConfigError(f"data.source: {source!r} is not a known source; choose one of {', '.join(DATA_SOURCES)}")
    return DATA_SOURCES[source]


def _verify(file: str, what: str, actual: str, expected: str, checks: list[str] | None) -> None:
    if actual != expected:
        raise DataError(
            f"{file}: {what} {actual[:16]}… differs from the official file's {expected[:16]}…; "
            "it is not the official data: delete it and download or copy the original again"
        )
    if checks is not None:
        checks.append(f"{file}: {what} matches the official file")


def _download(info: DataSource, folder: Path, files: list[RemoteFile]) -> None:
    """Fetch `files` into `folder`, trying each URL in turn; one-line DataError if one cannot be had."""
    for i, file in enumerate(files):
        reasons = []
        for url in file.urls:
            try:
                pooch.retrieve(url, known_hash=file.known_hash, fname=file.name, path=folder, progressbar=False)
                break
            except Exception as err:  # network, HTTP, hash mismatch, disk: all end the same way for the user
                reasons.append(one_line(err))
        else:
            names = ", ".join(f.name for f in files[i:])
            raise DataError(
                f"{info.name}: could not download {names} into {folder} ({reasons[-1]}); "
                "copy the official files there (data.data_dir, or --data-dir of `sdmcl data`, moves the cache), "
                "or set data.path to a directory that holds them"
            )


def _missing(info: DataSource, folder: Path, names: list[str], user_path: bool) -> DataError:
    where = f"{', '.join(names)} not found in {folder}"
    if user_path:
        return DataError(f"{info.name}: {where}; put the official files there, or unset data.path to download them")
    return DataError(
        f"{info.name}: {where} and downloads are off; run `sdmcl data fetch {info.name}` (--data-dir picks the "
        "cache), copy the official files there, or set data.path to a directory that holds them"
    )


def _scale_pixels(x: np.ndarray, pixel_scale: str, full: float = 255.0) -> np.ndarray:
    """uint8 pixels with maximum `full` → float32 v/full ("unit", in [0, 1]) or v·255/full ("raw255")."""
    out = x.astype(np.float32)  # then scale in place: no second 4-byte copy of the data
    if pixel_scale == "unit":
        out /= np.float32(full)
    elif full != 255.0:
        out *= np.float32(255.0 / full)
    return out


# ---- MNIST family -------------------------------------------------------------------------


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_idx(info, path, data_dir, pixel_scale, download, checks) -> Dataset:
    folder = Path(path).expanduser() if path else cache_dir(data_dir) / info.name
    found = [_find_idx(folder, stem) for stem in IDX_STEMS]
    missing = [f for f, p in zip(info.files, found) if p is None]
    if missing and path is None:
        for system_dir in map(Path, info.system_dirs):
            in_system = [_find_idx(system_dir, stem) for stem in IDX_STEMS]
            if all(in_system):
                folder, found, missing = system_dir, in_system, []
                break
    if missing and path is None and download:
        _download(info, folder, missing)
        found = [_find_idx(folder, stem) for stem in IDX_STEMS]
        missing = [f for f, p in zip(info.files, found) if p is None]
    if missing:
        raise _missing(info, folder, [f.name for f in missing], path is not None)
    arrays = []
    for stem, file in zip(IDX_STEMS, found):
        content = read_idx_bytes(file)
        _verify(str(file), "content sha256", hashlib.sha256(content).hexdigest(), IDX_SHA256[info.name][stem], checks)
        arrays.append(parse_idx(content, file))
    train_x, train_y, test_x, test_y = arrays
    for split, x, y, fx in (("train", train_x, train_y, found[0]), ("test", test_x, test_y, found[2])):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
            raise DataError(f"{fx}: images {x.shape} and labels {y.shape} do not pair up as (N, 28, 28) and (N,)")
    return Dataset(
        name=info.name,
        train_x=_scale_pixels(train_x, pixel_scale)[:, None],
        train_y=train_y.astype(np.int64),
        test_x=_scale_pixels(test_x, pixel_scale)[:, None],
        test_y=test_y.astype(np.int64),
        num_classes=10,
        input_shape=(1, 28, 28),
    )


# ---- CIFAR --------------------------------------------------------------------------------


def _load_cifar(info, path, data_dir, pixel_scale, download, checks) -> Dataset:
    layout: CifarLayout = CIFAR_LAYOUTS[info.name]
    names = layout.train + layout.test
    root = Path(path).expanduser() if path else cache_dir(data_dir) / info.name
    archive = root if root.is_file() else root / layout.archive
    folder = batch_dir(root, layout) if root.is_dir() else None
    if folder is None and not archive.is_file() and path is None and download:
        _download(info, root, list(info.files))
    if folder is not None:
        members, prefix = read_members_from_dir(folder, names), f"{folder}/"
    elif archive.is_file():
        members, prefix = read_members_from_archive(archive, layout, names), f"{archive}:{layout.folder}/"
    else:
        partial = root / layout.folder
        lacking = [f"{layout.folder}/{n}" for n in names if not (partial / n).is_file()] if partial.is_dir() else []
        raise _missing(info, root, [layout.archive] + lacking, path is not None)
    for name in names:
        _verify(prefix + name, "md5", hashlib.md5(members[name]).hexdigest(), CIFAR_MD5[info.name][name], checks)
    train_x, train_y, test_x, test_y = assemble(members, layout, prefix)
    return Dataset(
        name=info.name,
        train_x=_scale_pixels(train_x, pixel_scale),
        train_y=train_y,
        test_x=_scale_pixels(test_x, pixel_scale),
        test_y=test_y,
        num_classes=layout.num_classes,
        input_shape=(3, 32, 32),
    )


# ---- scikit-learn digits ------------------------------------------------------------------


def stratified_test_indices(y: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified test split.

    For each class c in ascending order, its indices are shuffled with one shared
    `numpy.random.RandomState(seed)` and the first round(test_fraction · n_c) go to the test set.
    """
    rng = np.random.RandomState(seed)
    picked = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        picked.append(members[: int(round(test_fraction * len(members)))])
    return np.sort(np.concatenate(picked))


def _load_digits(info, path, data_dir, pixel_scale, download, checks) -> Dataset:
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    digits = load_digits()
    x = digits.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    y = digits.target.astype(np.int64)
    test = np.zeros(len(y), dtype=bool)
    test[stratified_test_indices(y, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)] = True
    if checks is not None:
        checks.append("digits: bundled with scikit-learn (no file to check)")
    return Dataset(
        name=info.name,
        train_x=_scale_pixels(x[~test], pixel_scale, full=16.0),
        train_y=y[~test],
        test_x=_scale_pixels(x[test], pixel_scale, full=16.0),
        test_y=y[test],
        num_classes=10,
        input_shape=(1, 8, 8),
    )


# ---- feature files ------------------------------------------------------------------------

MAX_CLASS_ID = 2**20 - 1  # a larger label is damage, not a class: it would size every per-class table
EMBEDDING_PAIRS = (("all_data_train.pt", "all_data_test.pt"), ("train.pt", "test.pt"), ("train.npz", "test.npz"))


def _read_file(file: Path):
    """A .pt (torch.save, tensors only) or .npz file's content."""
    if file.suffix == ".npz":
        try:
            with np.load(file, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except Exception as err:
            raise DataError(f"{file}: not a readable .npz file ({one_line(err)}); save it again") from None
    import torch

    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(
            f"{file}: not loadable as tensors ({one_line(err)}); save it with torch.save((features, labels)) "
            "using only tensors"
        ) from None


def _as_numpy(value, file: Path, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception:
        raise DataError(f"{file}: the {what} are a {type(value).__name__}, not an array or tensor") from None


def _split(x, y, file: Path) -> tuple[np.ndarray, np.ndarray]:
    """Checked float32 features (N, …) and int64 labels (N,)."""
    x, y = _as_numpy(x, file, "features"), _as_numpy(y, file, "labels")
    real = np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating)
    if x.ndim < 2 or not (real or x.dtype == bool):
        raise DataError(f"{file}: features must be a numeric array of shape (N, D); got {x.dtype} {x.shape}")
    if len(x) == 0 or x[0].size == 0:
        raise DataError(f"{file}: features of shape {x.shape} hold no samples or no values per sample; the file is empty or truncated")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{file}: {len(x)} feature rows but labels of shape {y.shape}; they must pair up one to one")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.mod(y, 1) == 0):
            raise DataError(f"{file}: labels must be integer class ids; got {y.dtype}")
    if y.size and (y.min() < 0 or y.max() > MAX_CLASS_ID):
        raise DataError(f"{file}: labels from {y.min():g} to {y.max():g}; labels must be class ids 0..C-1 (C up to {MAX_CLASS_ID + 1:,})")
    y = y.astype(np.int64)
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{file}: features contain NaN or infinite values; recompute or clean the file")
    return x, y


def _pair(content, file: Path) -> tuple:
    """(x, y) of a one-split file: a tuple/list (x, y), a dict {x, y}, or .npz with x, y."""
    if isinstance(content, (tuple, list)) and len(content) == 2:
        return _split(content[0], content[1], file)
    if isinstance(content, dict) and {"x", "y"} <= content.keys():
        return _split(content["x"], content["y"], file)
    raise DataError(f"{file}: expected (features, labels) as a 2-tuple or arrays x and y; found {_describe(content)}")


def _describe(content) -> str:
    if isinstance(content, dict):
        return "keys " + ", ".join(map(str, content))
    if isinstance(content, (tuple, list)):
        return f"a {type(content).__name__} of {len(content)} items"
    return f"a {type(content).__name__}"


def _load_embeddings(info, path, data_dir, pixel_scale, download, checks) -> Dataset:
    if path is None:
        raise DataError(
            "embeddings: data.path is not set; give a directory with all_data_train.pt and all_data_test.pt "
            "(or train.pt/test.pt, train.npz/test.npz) or one .npz with train_x, train_y, test_x, test_y"
        )
    root = Path(path).expanduser()
    declared = None
    if root.is_dir():
        pairs = [(root / a, root / b) for a, b in EMBEDDING_PAIRS]
        pair = next((p for p in pairs if p[0].is_file() or p[1].is_file()), None)
        if pair is None:
            names = ", ".join(f"{a}+{b}" for a, b in EMBEDDING_PAIRS)
            raise DataError(f"embeddings: {root} holds none of {names}; put the two split files there")
        lacking = [p.name for p in pair if not p.is_file()]
        if lacking:
            raise DataError(f"embeddings: {lacking[0]} not found in {root}; both splits are needed")
        (train_x, train_y), (test_x, test_y) = (_pair(_read_file(p), p) for p in pair)
        files = list(pair)
    elif root.is_file():
        content = _read_file(root)
        keys = ("train_x", "train_y", "test_x", "test_y")
        if isinstance(content, dict) and set(keys) <= content.keys():
            parts = [content[k] for k in keys]
            declared = content.get("num_classes")
        elif isinstance(content, (tuple, list)) and len(content) == 4:
            parts = list(content)
        else:
            raise DataError(
                f"{root}: one file must hold both splits (train_x, train_y, test_x, test_y), found "
                f"{_describe(content)}; for one file per split give their directory as data.path"
            )
        (train_x, train_y), (test_x, test_y) = _split(parts[0], parts[1], root), _split(parts[2], parts[3], root)
        files = [root]
    else:
        raise DataError(f"embeddings: {root} does not exist; set data.path to the embedding directory or file")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"{root}: train samples have shape {train_x.shape[1:]} but test samples {test_x.shape[1:]}")
    num_classes = int(max(train_y.max(initial=-1), test_y.max(initial=-1))) + 1
    if declared is not None:
        value = _as_numpy(declared, root, "num_classes")
        if value.shape != () or not np.issubdtype(value.dtype, np.integer) or not 1 <= int(value) <= MAX_CLASS_ID + 1:
            raise DataError(f"{root}: num_classes must be one integer in 1..{MAX_CLASS_ID + 1:,}; got {value.dtype} {value.shape}")
        if int(value) < num_classes:
            raise DataError(f"{root}: num_classes is {int(value)} but labels go up to {num_classes - 1}")
        num_classes = int(value)
    if checks is not None:
        checks.extend(f"{f}: your file (no official checksum)" for f in files)
    return Dataset(
        name=info.name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in train_x.shape[1:]),
    )


# ---- ImageNet32 ---------------------------------------------------------------------------


def _load_imagenet32(info, path, data_dir, pixel_scale, download, checks) -> Dataset:
    folder = Path(path).expanduser() if path else cache_dir(data_dir) / info.name
    train, test, missing = imagenet32.locate(folder)
    if missing:
        names = ", ".join(missing) if len(missing) < 4 else f"{missing[0]}, ... ({len(missing)} files)"
        raise DataError(
            f"imagenet32: {names} not found in {folder} (or its subdirectories); download Imagenet32_train and "
            "Imagenet32_val (pickle or npz) from image-net.org (an account is needed) and unpack them there"
            + ("" if path else ", or set data.path to where they are")
        )
    divide_by = 255.0 if pixel_scale == "unit" else None
    train_x, train_y = imagenet32.read_split(train, divide_by)
    test_x, test_y = imagenet32.read_split([test], divide_by)
    if checks is not None:
        checks.extend(f"{f}: structure checked (no pinned checksum for this release)" for f in train + [test])
    return Dataset(
        name=info.name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=imagenet32.NUM_CLASSES,
        input_shape=(3, imagenet32.SIDE, imagenet32.SIDE),
    )


def load_dataset(
    source: str,
    path: str | None = None,
    data_dir: str | None = None,
    pixel_scale: str = "unit",
    download: bool = True,
    checks: list[str] | None = None,
) -> Dataset:
    """Load a data source as float32 inputs (N, *input_shape) and int64 labels.

    - `path`: a directory holding the original files (or, for embeddings, a file); never
      downloaded into. Without it, the cache `cache_dir(data_dir)/<source>` is used and missing
      files are downloaded when `download` is true.
    - `pixel_scale`: "unit" → [0, 1] (uint8 / 255; digits / 16), the reference implementation's
      scale (it divides by 255 at load); "raw255" → [0, 255] floats. Embeddings are returned unscaled.
    - `checks`: if a list is given, one line per verified file is appended to it.
    """
    info = source_info(source)
    if pixel_scale not in PIXEL_SCALES:
        raise ConfigError(f"data.pixel_scale: {pixel_scale!r} is not one of {', '.join(PIXEL_SCALES)}")
    data = info.load(path=path, data_dir=data_dir, pixel_scale=pixel_scale, download=download, checks=checks)
    check_dataset(data, source)
    return data


def check_dataset(data, source: str) -> None:
    """The contract every source's `load` keeps (a plugin's too): DataError naming the breach."""
    if not isinstance(data, Dataset):
        raise DataError(f"data source {source!r} returned a {type(data).__name__}, not a sdmcl.data.dataset.Dataset")
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            raise DataError(f"data source {source!r}: {split}_x and {split}_y must be numpy arrays")
        if len(x) != len(y) or y.ndim != 1:
            raise DataError(f"data source {source!r}: {len(x)} {split} inputs but labels of shape {y.shape}")
        if x.shape[1:] != tuple(data.input_shape):
            raise DataError(f"data source {source!r}: {split} inputs of shape {x.shape[1:]}, input_shape says {data.input_shape}")
        if y.size and (y.min() < 0 or y.max() >= data.num_classes):
            raise DataError(f"data source {source!r}: {split} labels outside 0..{data.num_classes - 1}")


def fetch(source: str, data_dir: str | None = None) -> Path:
    """Download the source's missing files into the cache (checked by pooch); return the folder."""
    return source_info(source).fetch(data_dir)


def cache_status(source: str, data_dir: str | None = None) -> str:
    """Where the source's files are for `sdmcl data list`, in a few words."""
    return source_info(source).status(data_dir)

"""Data sources: IDX and CIFAR parsers, embeddings, digits, offline errors, real Fashion-MNIST."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sdmcl.data import sources
from sdmcl.data.commands import add_parser
from sdmcl.data.idx import parse_idx, read_idx
from sdmcl.data.sources import IDX_STEMS, load_dataset
from sdmcl.errors import ConfigError, DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(arr: np.ndarray, code: int, dtype: str) -> bytes:
    """IDX encoding written out by hand: 0, 0, type, ndim, big-endian sizes, big-endian data."""
    return bytes([0, 0, code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.astype(dtype).tobytes()


# ---- IDX ---------------------------------------------------------------------------------

IMAGES = np.array([[[0, 1, 2], [3, 4, 255]], [[10, 20, 30], [40, 50, 60]]], dtype=np.uint8)  # (2, 2, 3)
LABELS = np.array([7, 3], dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_and_labels(tmp_path, compress):
    for name, arr in (("img", IMAGES), ("lab", LABELS)):
        raw = idx_bytes(arr, 0x08, ">u1")
        f = tmp_path / name
        f.write_bytes(gzip.compress(raw) if compress else raw)
        out = read_idx(f)
        assert out.shape == arr.shape and out.dtype == np.uint8
        assert out.tolist() == arr.tolist()


def test_idx_detects_gzip_by_magic_not_name(tmp_path):
    raw = idx_bytes(LABELS, 0x08, ">u1")
    (tmp_path / "plain.gz").write_bytes(raw)
    (tmp_path / "zipped.bin").write_bytes(gzip.compress(raw))
    assert read_idx(tmp_path / "plain.gz").tolist() == [7, 3]
    assert read_idx(tmp_path / "zipped.bin").tolist() == [7, 3]


def test_idx_big_endian_multibyte():
    out = parse_idx(idx_bytes(np.array([-2, 300, 1 << 20]), 0x0C, ">i4"))
    assert out.tolist() == [-2, 300, 1 << 20] and out.dtype == np.int32
    # hand-written bytes: int16 0x0102 = 258
    assert parse_idx(bytes([0, 0, 0x0B, 1, 0, 0, 0, 1, 1, 2])).tolist() == [258]


@pytest.mark.parametrize(
    "mangle, says",
    [
        (lambda b: b[:-1], "data bytes follow"),  # truncated payload
        (lambda b: b + b"\0", "data bytes follow"),  # trailing garbage
        (lambda b: b"\x08\x03" + b[2:], "not an IDX file"),  # bad magic
        (lambda b: b[:2] + b"\x42" + b[3:], "unknown IDX element type"),
        (lambda b: b[:10], "ends inside the header"),
    ],
)
def test_idx_corrupt_raises_data_error(tmp_path, mangle, says):
    f = tmp_path / "bad-idx3-ubyte"
    f.write_bytes(mangle(idx_bytes(IMAGES, 0x08, ">u1")))
    with pytest.raises(DataError) as err:
        read_idx(f)
    msg = str(err.value)
    assert str(f) in msg and says in msg and "delete it" in msg and "\n" not in msg


def test_idx_truncated_gzip(tmp_path):
    f = tmp_path / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8), 0x08, ">u1"))[:-12])
    with pytest.raises(DataError, match="gzip stream is damaged"):
        read_idx(f)


# ---- MNIST family through load_dataset ---------------------------------------------------


def write_fake_mnist(folder: Path, names: dict[str, str] | None = None) -> dict[str, str]:
    """Tiny MNIST-shaped IDX files (3 train, 2 test images); returns their content sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": np.arange(3 * 28 * 28, dtype=np.uint64).reshape(3, 28, 28) % 256,
        "train-labels-idx1-ubyte": np.array([0, 9, 4]),
        "t10k-images-idx3-ubyte": np.full((2, 28, 28), 255),
        "t10k-labels-idx1-ubyte": np.array([1, 2]),
    }
    hashes = {}
    for stem, arr in arrays.items():
        raw = idx_bytes(arr, 0x08, ">u1")
        hashes[stem] = hashlib.sha256(raw).hexdigest()
        name = (names or {}).get(stem, stem + ".gz")
        (folder / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    return hashes


def test_mnist_from_user_dir_with_unzipped_and_dotted_names(tmp_path, monkeypatch):
    names = {"train-images-idx3-ubyte": "train-images.idx3-ubyte", "t10k-labels-idx1-ubyte": "t10k-labels-idx1-ubyte"}
    monkeypatch.setitem(sources.IDX_SHA256, "mnist", write_fake_mnist(tmp_path, names))
    checks: list[str] = []
    data = load_dataset("mnist", path=str(tmp_path), checks=checks)
    assert data.train_x.shape == (3, 1, 28, 28) and data.test_x.shape == (2, 1, 28, 28)
    assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int64
    assert data.train_y.tolist() == [0, 9, 4] and data.test_y.tolist() == [1, 2]
    assert data.train_x[0, 0, 0, 5] == np.float32(5) / np.float32(255)
    assert data.test_x.min() == 1.0 and data.num_classes == 10 and data.input_shape == (1, 28, 28)
    assert len(checks) == 4 and all("matches the official" in c for c in checks)
    raw = load_dataset("mnist", path=str(tmp_path), pixel_scale="raw255")
    assert raw.train_x[0, 0, 1, 0] == 28.0 and raw.test_x.max() == 255.0


def test_user_files_that_differ_from_official_are_rejected(tmp_path):
    write_fake_mnist(tmp_path)  # real pinned hashes stay in place
    with pytest.raises(DataError, match="differs from the official"):
        load_dataset("mnist", path=str(tmp_path))


def test_missing_user_files_are_named(tmp_path):
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", path=str(tmp_path))
    assert f"t10k-images-idx3-ubyte.gz not found in {tmp_path}" in str(err.value)


def test_offline_download_failure_names_files_and_directory(tmp_path, monkeypatch):
    tried = []

    def no_network(url, known_hash, fname, path, progressbar):
        tried.append(url)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(sources.pooch, "retrieve", no_network)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", data_dir=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and f"into {tmp_path / 'mnist'}" in msg and "data.path" in msg
    assert all(stem + ".gz" in msg for stem in IDX_STEMS)
    assert tried == [m + "train-images-idx3-ubyte.gz" for m in sources._MNIST_MIRRORS]  # every mirror, then stop

    with pytest.raises(DataError) as err:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert "cifar-10-python.tar.gz" in str(err.value) and str(tmp_path / "cifar10") in str(err.value)


def no_system_copies(monkeypatch):
    """Hide OS-installed copies (e.g. Debian's /usr/share/datasets/fashion-mnist) from the loader."""
    for name, info in list(sources.SOURCES.items()):
        monkeypatch.setitem(sources.SOURCES, name, dataclasses.replace(info, system_dirs=()))


def test_system_copy_is_used_before_downloading(tmp_path, monkeypatch):
    staged = tmp_path / "system"
    hashes = write_fake_mnist(staged)
    monkeypatch.setitem(sources.IDX_SHA256, "fashion-mnist", hashes)
    info = sources.SOURCES["fashion-mnist"]
    monkeypatch.setitem(sources.SOURCES, "fashion-mnist", dataclasses.replace(info, system_dirs=(str(staged),)))
    monkeypatch.setattr(sources.pooch, "retrieve", lambda *a, **k: pytest.fail("must not download"))
    data = load_dataset("fashion-mnist", data_dir=str(tmp_path / "cache"))
    assert data.train_x.shape[0] > 0


def test_download_off_points_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("SDMCL_DATA_DIR", str(tmp_path))
    no_system_copies(monkeypatch)
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", download=False)
    assert "`sdmcl data fetch fashion-mnist`" in str(err.value) and str(tmp_path / "fashion-mnist") in str(err.value)


def test_download_goes_to_cache_with_pinned_hash(tmp_path, monkeypatch):
    staged = tmp_path / "staged"
    hashes = write_fake_mnist(staged)
    monkeypatch.setitem(sources.IDX_SHA256, "fashion-mnist", hashes)
    no_system_copies(monkeypatch)
    calls = []

    def fake_retrieve(url, known_hash, fname, path, progressbar):
        calls.append((url, known_hash))
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / fname).write_bytes((staged / fname).read_bytes())
        return str(Path(path) / fname)

    monkeypatch.setattr(sources.pooch, "retrieve", fake_retrieve)
    data = load_dataset("fashion-mnist", data_dir=str(tmp_path / "cache"))
    assert data.train_y.tolist() == [0, 9, 4]
    assert calls[0] == (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz",
        "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    )
    assert len(calls) == 4
    load_dataset("fashion-mnist", data_dir=str(tmp_path / "cache"))  # cached: no new download
    assert len(calls) == 4
    assert sources.cache_status("fashion-mnist", str(tmp_path / "cache")).startswith("cached in")


# ---- CIFAR -------------------------------------------------------------------------------


def cifar_batch(first: int, n: int, label_key: bytes, labels: list[int]) -> bytes:
    """n images; image i has every red pixel = first+i, green = 100+first+i, blue = 200+i, pixel (0,1) of red = 7."""
    rows = np.zeros((n, 3072), dtype=np.uint8)
    for i in range(n):
        rows[i, :1024], rows[i, 1024:2048], rows[i, 2048:] = first + i, 100 + first + i, 200 + i
        rows[i, 1] = 7
    return pickle.dumps({b"batch_label": b"x", b"data": rows, label_key: labels, b"filenames": [b"a"] * n}, protocol=2)


def fake_cifar10() -> dict[str, bytes]:
    members = {f"data_batch_{b}": cifar_batch(10 * b, 2, b"labels", [b, 9 - b]) for b in range(1, 6)}
    members["test_batch"] = cifar_batch(90, 3, b"labels", [0, 5, 9])
    return members


def write_dir(root: Path, folder: str, members: dict[str, bytes]) -> None:
    (root / folder).mkdir(parents=True)
    for name, raw in members.items():
        (root / folder / name).write_bytes(raw)


def write_tar(archive: Path, folder: str, members: dict[str, bytes]) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def md5s(members: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.md5(v).hexdigest() for k, v in members.items()}


@pytest.mark.parametrize("layout", ["dir", "tar"])
def test_cifar10_both_layouts(tmp_path, monkeypatch, layout):
    members = fake_cifar10()
    monkeypatch.setitem(sources.CIFAR_MD5, "cifar10", md5s(members))
    if layout == "dir":
        write_dir(tmp_path, "cifar-10-batches-py", members)
    else:
        write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    checks: list[str] = []
    data = load_dataset("cifar10", path=str(tmp_path), pixel_scale="raw255", checks=checks)
    assert data.train_x.shape == (10, 3, 32, 32) and data.test_x.shape == (3, 3, 32, 32)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert data.train_y.tolist() == [1, 8, 2, 7, 3, 6, 4, 5, 5, 4]  # batches 1..5 in order
    assert data.test_y.tolist() == [0, 5, 9]
    # image 3 = second image of data_batch_2: red 21, green 121, blue 201; red (0, 1) is 7
    assert data.train_x[3, 0, 5, 5] == 21 and data.train_x[3, 1, 31, 0] == 121 and data.train_x[3, 2, 0, 1] == 201
    assert data.train_x[3, 0, 0, 1] == 7
    assert len(checks) == 6 and all("md5 matches" in c for c in checks)
    unit = load_dataset("cifar10", path=str(tmp_path))
    assert unit.test_x[2, 2, 0, 0] == np.float32(202) / np.float32(255)


def test_cifar100_tar_fine_labels(tmp_path, monkeypatch):
    members = {
        "train": cifar_batch(0, 3, b"fine_labels", [99, 0, 42]),
        "test": cifar_batch(5, 1, b"fine_labels", [17]),
    }
    monkeypatch.setitem(sources.CIFAR_MD5, "cifar100", md5s(members))
    write_tar(tmp_path / "cache" / "cifar100" / "cifar-100-python.tar.gz", "cifar-100-python", members)
    data = load_dataset("cifar100", data_dir=str(tmp_path / "cache"), download=False)
    assert data.num_classes == 100 and data.train_y.tolist() == [99, 0, 42] and data.test_y.tolist() == [17]
    assert data.test_x[0, 1, 3, 3] == np.float32(105) / np.float32(255)


def test_cifar_checksum_mismatch_and_corruption(tmp_path, monkeypatch):
    members = fake_cifar10()
    write_dir(tmp_path, "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="data_batch_1: md5 .* differs from the official"):
        load_dataset("cifar10", path=str(tmp_path))

    members["data_batch_3"] = members["data_batch_3"][:-40]  # truncated pickle
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(members["data_batch_3"])
    monkeypatch.setitem(sources.CIFAR_MD5, "cifar10", md5s(members))
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", path=str(tmp_path))
    assert "cifar-10-batches-py/data_batch_3: not a readable CIFAR batch" in str(err.value)


def test_cifar_truncated_archive(tmp_path):
    write_tar(tmp_path / "full.tar.gz", "cifar-10-batches-py", fake_cifar10())
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes((tmp_path / "full.tar.gz").read_bytes()[:300])
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", path=str(tmp_path))
    assert str(archive) in str(err.value) and "truncated or corrupt" in str(err.value)


def test_cifar_pickle_cannot_run_code(tmp_path, monkeypatch):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    members = fake_cifar10()
    members["test_batch"] = pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2)
    monkeypatch.setitem(sources.CIFAR_MD5, "cifar10", md5s(members))
    write_dir(tmp_path, "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset("cifar10", path=str(tmp_path))


# ---- embeddings --------------------------------------------------------------------------


def test_embeddings_torch_tuple_dir(tmp_path):
    g = torch.Generator().manual_seed(0)
    tr_x, te_x = torch.randn(6, 4, generator=g), torch.randn(3, 4, generator=g)
    torch.save((tr_x, torch.tensor([0, 1, 2, 3, 4, 6])), tmp_path / "all_data_train.pt")
    torch.save((te_x, torch.tensor([6, 0, 1])), tmp_path / "all_data_test.pt")
    data = load_dataset("embeddings", path=str(tmp_path), pixel_scale="raw255")  # scale is ignored
    assert data.input_shape == (4,) and data.num_classes == 7
    assert np.array_equal(data.train_x, tr_x.numpy()) and data.train_x.dtype == np.float32
    assert data.test_y.tolist() == [6, 0, 1] and data.test_y.dtype == np.int64


def test_embeddings_npz_single_file_and_pair(tmp_path):
    x = np.arange(8, dtype=np.float64).reshape(4, 2)
    np.savez(tmp_path / "both.npz", train_x=x, train_y=[0, 1, 1, 0], test_x=x[:2], test_y=[1, 2])
    data = load_dataset("embeddings", path=str(tmp_path / "both.npz"))
    assert data.num_classes == 3 and data.train_x.dtype == np.float32 and data.test_x.tolist() == [[0, 1], [2, 3]]

    pair = tmp_path / "pair"
    pair.mkdir()
    np.savez(pair / "train.npz", x=x, y=[0, 1, 2, 3])
    with pytest.raises(DataError, match="test.npz not found"):
        load_dataset("embeddings", path=str(pair))
    np.savez(pair / "test.npz", x=x[:1], y=[3])
    assert load_dataset("embeddings", path=str(pair)).num_classes == 4


def test_embeddings_errors(tmp_path):
    torch.save((torch.zeros(5, 3), torch.zeros(4, dtype=torch.long)), tmp_path / "train.pt")
    torch.save((torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)), tmp_path / "test.pt")
    with pytest.raises(DataError, match="5 feature rows but labels of shape"):
        load_dataset("embeddings", path=str(tmp_path))
    with pytest.raises(DataError, match="data.path is not set"):
        load_dataset("embeddings")
    odd = tmp_path / "odd"
    odd.mkdir()
    torch.save({"w": argparse.Namespace(a=1)}, odd / "all_data_train.pt")  # not tensors: weights_only refuses it
    torch.save((torch.zeros(1, 3), torch.zeros(1, dtype=torch.long)), odd / "all_data_test.pt")
    with pytest.raises(DataError, match="not loadable as tensors"):
        load_dataset("embeddings", path=str(odd))


# ---- digits ------------------------------------------------------------------------------


def test_digits_split_is_deterministic_and_stratified():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    assert a.input_shape == (1, 8, 8) and len(a.train_y) + len(a.test_y) == 1797
    from sklearn.datasets import load_digits

    per_class = np.bincount(load_digits().target)
    assert np.bincount(a.test_y).tolist() == [int(round(0.2 * n)) for n in per_class]
    assert a.train_x.min() == 0.0 and a.train_x.max() == 1.0
    raw = load_dataset("digits", pixel_scale="raw255")
    assert np.allclose(raw.train_x, a.train_x * 255, atol=1e-4) and raw.train_x.max() == 255.0
    # every digits image is in exactly one split (compared as sorted lists of rows: duplicates count)
    split_rows = np.concatenate([a.train_x, a.test_x]).reshape(1797, -1)
    all_rows = (load_digits().images.astype(np.float32) / np.float32(16)).reshape(1797, -1)
    assert sorted(r.tobytes() for r in split_rows) == sorted(r.tobytes() for r in all_rows)


def test_bad_source_and_scale():
    with pytest.raises(ConfigError, match="data.source: 'svhn'"):
        load_dataset("svhn")
    with pytest.raises(ConfigError, match="data.pixel_scale"):
        load_dataset("digits", pixel_scale="minus1to1")


# ---- `sdmcl data` ------------------------------------------------------------------------


def run_data(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sdmcl")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_data_commands(tmp_path, capsys):
    assert run_data(["data", "path", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path)
    run_data(["data", "check", "digits"])
    out = capsys.readouterr().out
    assert "test samples per class: 0:36 1:36 2:35 3:37" in out and "x (1438, 1, 8, 8) float32 in [0, 1]" in out
    run_data(["data", "list", "--data-dir", str(tmp_path)])
    assert f"not downloaded (would go to {tmp_path / 'mnist'})" in capsys.readouterr().out
    with pytest.raises(DataError, match="not a known source"):
        run_data(["data", "fetch", "svhn"])


# ---- the real Fashion-MNIST --------------------------------------------------------------


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} absent (Debian/Ubuntu package fashion-mnist)")
def test_real_fashion_mnist_verifies():
    checks: list[str] = []
    data = load_dataset("fashion-mnist", path=str(FASHION_DIR), checks=checks)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.num_classes == 10 and data.train_x.dtype == np.float32
    assert data.train_x.min() == 0.0 and data.train_x.max() == 1.0 and data.test_x.max() == 1.0
    assert np.bincount(data.train_y).tolist() == [6000] * 10 and np.bincount(data.test_y).tolist() == [1000] * 10
    assert data.train_y[:5].tolist() == [9, 0, 0, 3, 0]
    assert len(checks) == 4 and all("content sha256 matches the official file" in c for c in checks)

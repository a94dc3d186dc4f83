"""ImageNet32 (downsampled-ImageNet release) on tiny files the tests write, and Split
CIFAR-100 in the reference's task layout."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from sdmcl.data import sources
from sdmcl.data.sources import load_dataset
from sdmcl.errors import DataError


def batch(first_label: int, n: int, seed: int) -> dict:
    """n images; image i: every red pixel = seed+i, green = 50+seed+i, blue = 100+i, red (0, 1) = 7."""
    rows = np.zeros((n, 3072), dtype=np.uint8)
    for i in range(n):
        rows[i, :1024], rows[i, 1024:2048], rows[i, 2048:] = seed + i, 50 + seed + i, 100 + i
        rows[i, 1] = 7
    labels = [first_label + i for i in range(n)]  # class ids 1..1000, as released
    return {"data": rows, "labels": labels, "mean": rows.mean(0)}


def write_release(root: Path, fmt: str = "pickle") -> None:
    """The release's layout: Imagenet32_train/train_data_batch_1..10, Imagenet32_val/val_data."""
    files = {f"Imagenet32_train/train_data_batch_{b}": batch(100 * b - 99, 2, 10 * b) for b in range(1, 11)}
    files["Imagenet32_val/val_data"] = {k: v for k, v in batch(998, 3, 200).items() if k != "mean"}
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "pickle":
            path.write_bytes(pickle.dumps(content, protocol=4))  # Python 3 pickles with str keys
        else:
            np.savez(path.with_name(path.name + ".npz"), data=content["data"], labels=np.array(content["labels"]))


@pytest.mark.parametrize("fmt", ["pickle", "npz"])
def test_imagenet32_parser_on_a_tiny_release(tmp_path, fmt):
    write_release(tmp_path, fmt)
    checks: list[str] = []
    data = load_dataset("imagenet32", path=str(tmp_path), pixel_scale="raw255", checks=checks)
    assert data.num_classes == 1000 and data.input_shape == (3, 32, 32)
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (3, 3, 32, 32)
    assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int64
    # labels 1..1000 become 0..999; batches in order 1..10
    assert data.train_y.tolist()[:4] == [0, 1, 100, 101] and data.train_y.tolist()[-2:] == [900, 901]
    assert data.test_y.tolist() == [997, 998, 999]
    # image 3 = second image of batch 2: red 21, green 71, blue 101; red pixel (0, 1) is 7
    assert data.train_x[3, 0, 5, 5] == 21 and data.train_x[3, 1, 31, 0] == 71 and data.train_x[3, 2, 0, 1] == 101
    assert data.train_x[3, 0, 0, 1] == 7
    assert len(checks) == 11 and all("structure checked" in c for c in checks)
    unit = load_dataset("imagenet32", path=str(tmp_path))
    assert unit.test_x[2, 2, 0, 0] == np.float32(102) / np.float32(255)


def test_imagenet32_in_the_cache_directory_and_reference_test_name(tmp_path, monkeypatch):
    root = tmp_path / "cache" / "imagenet32"
    write_release(root)
    (root / "Imagenet32_val" / "val_data").rename(root / "Imagenet32_val" / "test_data")  # the reference's name
    monkeypatch.setenv("SDMCL_DATA_DIR", str(tmp_path / "cache"))
    assert sources.cache_status("imagenet32").startswith("your copy, in")
    assert load_dataset("imagenet32").test_y.tolist() == [997, 998, 999]


def test_imagenet32_errors(tmp_path):
    with pytest.raises(DataError, match=r"train_data_batch_1, \.\.\. \(11 files\) not found in .*image-net.org"):
        load_dataset("imagenet32", path=str(tmp_path))
    write_release(tmp_path)
    (tmp_path / "Imagenet32_train" / "train_data_batch_7").unlink()
    with pytest.raises(DataError, match="imagenet32: train_data_batch_7 not found in"):
        load_dataset("imagenet32", path=str(tmp_path))

    def rewrite(content) -> None:
        (tmp_path / "Imagenet32_train" / "train_data_batch_7").write_bytes(pickle.dumps(content))

    bad = batch(1, 2, 0)
    bad["labels"] = [0, 5]  # 0 is not a class id of the release (1..1000)
    rewrite(bad)
    with pytest.raises(DataError, match=r"train_data_batch_7: labels outside 1..1000 \(found 0..5\)"):
        load_dataset("imagenet32", path=str(tmp_path))
    wide = batch(1, 2, 0)
    wide["data"] = np.zeros((2, 3 * 64 * 64), dtype=np.uint8)  # the 64x64 release
    rewrite(wide)
    with pytest.raises(DataError, match=r"not uint8 \(N, 3072\); this reader takes the 32x32 release"):
        load_dataset("imagenet32", path=str(tmp_path))
    (tmp_path / "Imagenet32_train" / "train_data_batch_7").write_bytes(pickle.dumps(batch(1, 2, 0))[:-30])
    with pytest.raises(DataError, match="train_data_batch_7: not a readable ImageNet32 batch"):
        load_dataset("imagenet32", path=str(tmp_path))


class Boom:
    def __reduce__(self):
        return (print, ("pickle ran code",))


def test_imagenet32_pickle_cannot_run_code(tmp_path, capsys):
    write_release(tmp_path)
    evil = batch(1, 2, 0)
    evil["mean"] = Boom()
    (tmp_path / "Imagenet32_train" / "train_data_batch_3").write_bytes(pickle.dumps(evil))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_dataset("imagenet32", path=str(tmp_path))
    assert "pickle ran code" not in capsys.readouterr().out


def test_split_cifar100_reference_task_layout(tmp_path, monkeypatch):
    """The reference's Split CIFAR-100: 50 tasks of the consecutive fine classes (0,1), (2,3), …"""
    from sdmcl.config import parse_config
    from sdmcl.train.engine import prepare

    rows = np.repeat(np.arange(100, dtype=np.uint8), 3072).reshape(100, 3072)  # image of class c has every pixel c
    members = {
        "train": pickle.dumps({b"data": np.concatenate([rows, rows]), b"fine_labels": list(range(100)) * 2}, protocol=2),
        "test": pickle.dumps({b"data": rows, b"fine_labels": list(range(100))}, protocol=2),
    }
    monkeypatch.setitem(sources.CIFAR_MD5, "cifar100", {k: hashlib.md5(v).hexdigest() for k, v in members.items()})
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, raw in members.items():
        (folder / name).write_bytes(raw)
    cfg = parse_config({"data": {"source": "cifar100", "path": str(tmp_path)}, "model": {"name": "sdmlp", "neurons": 20, "k": 2}})
    tasks = prepare(cfg).tasks
    assert len(tasks) == 50
    assert [t.classes for t in tasks[:3]] == [(0, 1), (2, 3), (4, 5)] and tasks[-1].classes == (98, 99)
    for t in tasks:
        assert sorted(t.train_y.tolist()) == [t.classes[0]] * 2 + [t.classes[1]] * 2 and sorted(t.test_y.tolist()) == list(t.classes)
        # pixels follow their labels: class c's images are c/255 everywhere
        assert np.allclose(t.train_x.numpy()[:, 0] * 255, t.train_y.numpy(), atol=1e-3)


def test_authors_embedding_format_and_lfs_pointer(tmp_path):
    """The authors' ConvMixerEmbeddings/CIFAR10 files: a (float N×256, int64 labels) tuple per
    split. A Git LFS pointer in their place is refused with a one-line error."""
    import torch

    g = torch.Generator().manual_seed(0)
    torch.save((torch.randn(20, 256, generator=g), torch.arange(20) % 10), tmp_path / "all_data_train.pt")
    torch.save((torch.randn(10, 256, generator=g), torch.arange(10)), tmp_path / "all_data_test.pt")
    data = load_dataset("embeddings", path=str(tmp_path))
    assert data.input_shape == (256,) and data.num_classes == 10 and data.train_x.shape == (20, 256)
    (tmp_path / "all_data_test.pt").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 10240939\n")
    with pytest.raises(DataError, match="all_data_test.pt: not loadable as tensors"):
        load_dataset("embeddings", path=str(tmp_path))


def test_imagenet32_content_identifies_the_release_files(tmp_path):
    """The run stamp identifies a user's ImageNet32 copy by the files the loader reads (in the
    release's subdirectories), not by where they lie."""
    from sdmcl.data.fingerprint import content_id

    write_release(tmp_path / "a")
    write_release(tmp_path / "b")
    assert content_id("imagenet32", str(tmp_path / "a")) == content_id("imagenet32", str(tmp_path / "b"))
    (tmp_path / "b" / "Imagenet32_val" / "val_data").write_bytes(pickle.dumps(batch(1, 3, 9)))
    assert content_id("imagenet32", str(tmp_path / "a")) != content_id("imagenet32", str(tmp_path / "b"))

"""Every bad input ends in one clear line on stderr and exit code 2 (3 for divergence):
no traceback, and nothing left behind that could pass for a finished run."""

import errno
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hostile_common import lock_held_elsewhere
from sdmcl.cli import main

BASE = {
    "name": "bad",
    "data": {"source": "digits"},
    "model": {"name": "sdmlp", "neurons": 32, "k": 4, "gaba_switch_activations": 300},
    "train": {"epochs_per_task": 1, "batch_size": 64},
    "output": {"plots": False, "progress": False},
}


def deep_merge(base, over):
    out = {**base}
    for k, v in over.items():
        if k == "model" and isinstance(v, dict) and v.get("name", "sdmlp") != "sdmlp":
            out[k] = v  # another model: its own section, not SDMLP keys
            continue
        out[k] = deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_truncated_mnist(d: Path) -> None:
    d.mkdir()
    imgs, labels = np.zeros((4, 28, 28)), np.arange(4)
    for stem, arr in (("train-images-idx3-ubyte", imgs), ("train-labels-idx1-ubyte", labels),
                      ("t10k-images-idx3-ubyte", imgs), ("t10k-labels-idx1-ubyte", labels)):
        raw = idx_bytes(arr)
        (d / (stem + ".gz")).write_bytes(gzip.compress(raw[: len(raw) // 2] if "train-images" in stem else raw))


def make_corrupt_cifar(d: Path) -> None:
    batches = d / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (batches / name).write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})[:40])


def make_embeddings(d: Path, n_labels_train: int, label_shift: int = 0, dim: int = 8) -> None:
    d.mkdir()
    for split in ("train", "test"):
        x = torch.rand(10, dim)
        y = torch.arange(10) % 4 - label_shift
        if split == "train":
            y = y[:n_labels_train]
        torch.save((x, y), d / f"all_data_{split}.pt")


def pretrained_digits(tmp: Path) -> Path:
    cfg = deep_merge(BASE, {"output": {"dir": str(tmp / "pre")}, "benchmark": {"joint": True}})
    path = tmp / "pre.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 0
    return next((tmp / "pre").iterdir())


# (id, overrides of BASE or a callable(tmp) -> overrides, text the message must contain)
CASES = [
    ("unknown-top-key", {"modle": {}}, "modle: unknown key; did you mean 'model'"),
    ("unknown-model-key", {"model": {"neurnos": 5}}, "model.neurnos: unknown key; did you mean 'model.neurons'"),
    ("unknown-train-key", {"train": {"epochs": 5}}, "train.epochs: unknown key"),
    ("wrong-type-k", {"model": {"k": "ten"}}, "model.k: expected int"),
    ("bool-for-int", {"train": {"batch_size": True}}, "train.batch_size: expected int"),
    ("k-equals-neurons", {"model": {"k": 32}}, "model.k: must satisfy 1 <= k < neurons"),
    ("k-zero", {"model": {"k": 0}}, "model.k: must satisfy"),
    ("lr-zero", {"optim": {"lr": 0}}, "optim.lr: must be > 0"),
    ("lr-negative", {"optim": {"lr": -0.1}}, "optim.lr: must be > 0"),
    ("epochs-zero", {"train": {"epochs_per_task": 0}}, "train.epochs_per_task: must be >= 1"),
    ("classes-per-task-not-dividing", {"benchmark": {"classes_per_task": 3}}, "benchmark.classes_per_task: 3 does not divide"),
    ("duplicate-classes", {"benchmark": {"class_order": [0, 1, 1, 2]}}, "benchmark.class_order: classes [1] appear more than once"),
    ("unknown-classes", {"benchmark": {"class_order": [0, 12]}}, "benchmark.class_order: classes [12] do not exist"),
    ("empty-order", {"benchmark": {"class_order": []}}, "benchmark.class_order: the list is empty"),
    ("seeded-without-seed", {"benchmark": {"class_order": "seeded"}}, "benchmark.class_order_seed: required"),
    ("unknown-model", {"model": {"name": "sdmpl"}}, "model.name: unknown model 'sdmpl' (did you mean 'sdmlp'?)"),
    ("unknown-k-approach", {"model": {"k_approach": "gaba"}}, "model.k_approach: 'gaba' is not one of"),
    ("bad-optimizer", {"optim": {"name": "adamx"}}, "optim.name: 'adamx' is not one of"),
    ("negative-lambda", {"regularizer": {"name": "ewc", "lam": -1}}, "regularizer.lam: must be >= 0"),
    ("dropout-out-of-range", {"model": {"name": "relu_mlp", "dropout": 1.5}}, "model.dropout: must be in [0, 1)"),
    ("fly-with-regularizer", {"model": {"name": "fly"}, "regularizer": {"name": "ewc"}}, "regularizer.name: 'ewc' needs gradients"),
    ("fly-with-optimizer", {"model": {"name": "fly"}, "optim": {"name": "adam"}}, "optim: model 'fly' learns without gradients"),
    ("unknown-source", {"data": {"source": "mnits"}}, "mnits"),
    ("bad-pixel-scale", {"data": {"pixel_scale": "bytes"}}, "data.pixel_scale"),
    ("missing-mnist-offline", lambda t: {"data": {"source": "mnist", "data_dir": str(t / "cache"), "download": False}},
     "train-images-idx3-ubyte.gz"),
    ("missing-path", lambda t: {"data": {"source": "mnist", "path": str(t / "nowhere")}}, "nowhere"),
    ("truncated-idx", lambda t: (make_truncated_mnist(t / "mn"), {"data": {"source": "mnist", "path": str(t / "mn")}})[1],
     "train-images-idx3-ubyte.gz"),
    ("corrupt-cifar", lambda t: (make_corrupt_cifar(t / "c"), {"data": {"source": "cifar10", "path": str(t / "c")}})[1], "data_batch_1"),
    ("embeddings-n-mismatch", lambda t: (make_embeddings(t / "e", 7), {"data": {"source": "embeddings", "path": str(t / "e")}})[1],
     "all_data_train.pt"),
    ("embeddings-negative-labels", lambda t: (make_embeddings(t / "e", 10, 1), {"data": {"source": "embeddings", "path": str(t / "e")}})[1],
     "labels"),
    ("init-from-missing", lambda t: {"init_from": str(t / "nope.pt")}, "nope.pt: checkpoint file not found"),
    ("init-from-truncated", lambda t: ((t / "trunc.pt").write_bytes(b"PK\x03\x04garbage"), {"init_from": str(t / "trunc.pt")})[1],
     "trunc.pt: unreadable checkpoint"),
    ("init-from-other-config", lambda t: {"init_from": str(pretrained_digits(t)), "model": {"k": 5}}, "model.k (4 vs 5)"),
    ("init-from-wrong-input-dim", lambda t: (make_embeddings(t / "e", 10, 0, dim=8),
     {"init_from": str(pretrained_digits(t)), "data": {"source": "embeddings", "path": str(t / "e")}})[1], "takes 64 inputs"),
    ("output-under-a-file", lambda t: ((t / "afile").write_text("x"), {"output": {"dir": str(t / "afile" / "runs")}})[1], "afile"),
    ("cuda-unavailable", {"train": {"device": "cuda"}}, "train.device"),
]


@pytest.mark.parametrize("case_id, over, expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, capsys, case_id, over, expect):
    if case_id == "cuda-unavailable" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the request is valid here")
    over = over(tmp_path) if callable(over) else over
    capsys.readouterr()
    out_dir = tmp_path / "runs"
    cfg = deep_merge(deep_merge(BASE, {"output": {"dir": str(out_dir)}}), over)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["run", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("sdmcl: error: ") and err.count("\n") == 1, err
    assert expect in err, err
    assert "Traceback" not in err
    assert not list(out_dir.glob("*/summary.json"))


def test_malformed_yaml(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  k: [1, 2\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:3:1: malformed YAML" in err and err.count("\n") == 1


def test_missing_config_and_bad_override(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: config file not found" in capsys.readouterr().err
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert main(["run", str(path), "model.k"]) == 2  # an argument without '=' is not an override
    assert main(["run", str(path), "model.k=abc"]) == 2
    assert "model.k: expected int" in capsys.readouterr().err


def test_run_directory_in_use(tmp_path, capsys):
    from sdmcl.config import parse_config
    from sdmcl.train.rundir import RunDir, run_dir_for

    cfg_dict = deep_merge(BASE, {"output": {"dir": str(tmp_path / "runs")}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg_dict))
    rd = RunDir(run_dir_for(parse_config(cfg_dict)))
    with lock_held_elsewhere(rd, inside=lambda: rd.create(parse_config(cfg_dict))) as pid:
        # a launcher skips a run another process is training, with a note ...
        assert main(["run", str(path)]) == 0
        captured = capsys.readouterr()
        assert f"skipped, in use by process {pid}" in captured.out and "1 run(s) skipped" in captured.err
        assert not rd.is_finished()
        # ... and resuming that very directory is an error
        assert main(["run", "--resume", str(rd.path)]) == 2
        err = capsys.readouterr().err
        assert f"in use by process {pid}" in err and err.count("\n") == 1
    assert main(["run", str(path)]) == 0  # the lock is released with its holder


def test_disk_full_stops_cleanly_and_keeps_last_checkpoint(tmp_path, capsys, monkeypatch):
    from sdmcl.train import checkpoint

    cfg = deep_merge(BASE, {"output": {"dir": str(tmp_path / "runs")}, "train": {"epochs_per_task": 2}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    real_fsync, calls = checkpoint.os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > 5:  # config and provenance.json, then a good checkpoint; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "free disk space" in err and "Traceback" not in err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not (run_dir / "summary.json").exists()
    monkeypatch.setattr(checkpoint.os, "fsync", real_fsync)
    ckpt = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")  # intact and loadable
    assert ckpt["position"]["next_task"] >= 1
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))  # no half-written file left


def test_divergence_exits_3_naming_where(tmp_path, capsys):
    cfg = deep_merge(BASE, {"output": {"dir": str(tmp_path / "runs")}, "model": {"name": "relu_mlp", "neurons": 32},
                            "optim": {"lr": 1.0e30, "grad_clip": None}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 3
    err = capsys.readouterr().err
    assert "training diverged" in err and "task 0" in err and "epoch 1" in err and "step" in err and "optim.lr" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not list((tmp_path / "runs").glob("*/summary.json"))

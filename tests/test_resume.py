"""Exact resume: a run killed (SIGKILL) or stopped (SIGINT/SIGTERM) at any point and resumed
ends bit-identical to the same run uninterrupted (CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sdmcl.train.checkpoint import load_checkpoint

TIME_FIELDS = {"train_seconds", "seconds_per_epoch", "provenance"}  # provenance: times, command line


def write_config(tmp_path: Path, name: str, **extra) -> Path:
    cfg = {
        "name": name,
        "data": {"source": "digits"},
        # GABA threshold chosen so the switch is mid-transition at the kill points
        "model": {"name": "sdmlp", "neurons": 64, "k": 4, "gaba_switch_activations": 1500},
        "optim": {"name": "sgd", "lr": 0.2},
        "train": {"epochs_per_task": 3, "batch_size": 64, "eval_every": 1, "threads": 1},
        "benchmark": {"num_tasks": 3},
        "output": {"dir": str(tmp_path / "runs"), "checkpoint_every": 1, "plots": False, "progress": False},
    }
    for key, value in extra.items():
        sec, k = key.split("__")
        cfg.setdefault(sec, {})[k] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def sdmcl(args, fault=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SDMCL_FAULT", None)
    if fault:
        env["SDMCL_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "sdmcl.cli", *args], env=env, capture_output=True, text=True, timeout=300)


def outputs(run_dir: Path):
    model = load_checkpoint(run_dir / "model.pt")["model"]
    metrics = (run_dir / "metrics.jsonl").read_text()
    matrix = (run_dir / "accuracy_matrix.csv").read_text()
    summary = {k: v for k, v in json.loads((run_dir / "summary.json").read_text()).items() if k not in TIME_FIELDS}
    return model, metrics, matrix, summary


def assert_identical(a, b):
    model_a, *rest_a = a
    model_b, *rest_b = b
    assert model_a.keys() == model_b.keys()
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key
    assert rest_a == rest_b


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted runs, one per regularizer."""
    out = {}
    for reg in ("none", "ewc", "si"):
        tmp = tmp_path_factory.mktemp(f"ref-{reg}")
        cfg = write_config(tmp, f"r-{reg}", regularizer__name=reg)
        done = sdmcl(["run", str(cfg)])
        assert done.returncode == 0, done.stderr
        (run_dir,) = (tmp / "runs").iterdir()
        out[reg] = (cfg, outputs(run_dir))
    return out


# (regularizer, fault): steps per epoch = 5 (≈290 samples / 64); 3 tasks × 3 epochs
CASES = [
    ("none", "step:7"),  # mid-epoch, task 1
    ("none", "eval:4"),  # during an evaluation
    ("none", "checkpoint:5"),  # after the temp checkpoint is written, before the rename
    ("ewc", "step:23"),  # task 2, after task 1's Fisher was stored
    ("si", "step:38"),  # task 3: SI running sums and importances
    ("si", "checkpoint:8"),
]


@pytest.mark.parametrize("reg, fault", CASES)
def test_sigkill_then_rerun_is_bit_identical(tmp_path, reference, reg, fault):
    cfg = write_config(tmp_path, f"r-{reg}", regularizer__name=reg)
    killed = sdmcl(["run", str(cfg)], fault=fault)
    assert killed.returncode == -9, killed.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not (run_dir / "summary.json").exists()
    resumed = sdmcl(["run", str(cfg)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert_identical(outputs(run_dir), reference[reg][1])


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_writes_checkpoint_and_resume_flag_finishes_identically(tmp_path, reference, sig):
    cfg = write_config(tmp_path, "r-none")
    stopped = sdmcl(["run", str(cfg)], fault=f"step:12:{sig}")
    assert stopped.returncode == 130
    assert "Traceback" not in stopped.stderr and "Resume" in stopped.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["position"]["epochs_done"] == 3  # stopped at the end of the epoch holding step 12
    resumed = sdmcl(["run", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(outputs(run_dir), reference["none"][1])


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    cfg = write_config(tmp_path, "trunc")
    sdmcl(["run", str(cfg)], fault="step:12")
    (run_dir,) = (tmp_path / "runs").iterdir()
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    out = sdmcl(["run", str(cfg)])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "last.pt: unreadable checkpoint" in out.stderr


def test_checkpoint_without_a_later_statistic_buffer_still_loads():
    """Checkpoints written before the reference dead-neuron statistic existed lack the
    `activation_window` buffer: they load, with that buffer at zero; a missing weight still
    does not fit."""
    from sdmcl.config import parse_config
    from sdmcl.registry import build_model
    from sdmcl.train.checkpoint import load_weights

    for name in ("sdmlp", "relu_mlp"):
        cfg = parse_config({"model": {"name": name, "neurons": 16, "k": 4} if name == "sdmlp" else {"name": name, "neurons": 16}})
        torch.manual_seed(0)
        old = build_model(cfg.model, 8, 3)
        old.activation_window += 5.0
        state = {k: v for k, v in old.state_dict().items() if not k.endswith("activation_window")}
        new = build_model(cfg.model, 8, 3)
        load_weights(new, state)
        for key, value in state.items():
            assert torch.equal(new.state_dict()[key], value), (name, key)
        assert torch.count_nonzero(new.activation_window) == 0
        weight = next(k for k in state if k.endswith("weight"))
        with pytest.raises(RuntimeError, match="Missing"):
            load_weights(build_model(cfg.model, 8, 3), {k: v for k, v in state.items() if k != weight})

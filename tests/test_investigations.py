"""Run-time investigations: the neuron statistics on hand-made counts, the snapshots and update
norms written by real (small) runs checked against independent recomputation, resume."""

import csv
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from sdmcl import metrics
from sdmcl.config import parse_config
from sdmcl.errors import ConfigError
from sdmcl.train.callbacks import Callback
from sdmcl.train.checkpoint import load_checkpoint
from sdmcl.train.engine import Engine, build_model, prepare, run
from sdmcl.train.investigations import silence_bin, silence_bin_range
from sdmcl.train.rundir import RunDir, run_dir_for

# ---------------------------------------------------------------- statistics on hand-made counts


def test_class_entropy_of_hand_made_counts():
    counts = np.array([[5, 0, 0], [1, 1, 0], [2, 2, 4], [0, 0, 0]])  # neurons × classes
    h = metrics.class_entropy(counts)
    assert h[0] == 0.0  # one class only
    assert h[1] == pytest.approx(math.log(2))
    assert h[2] == pytest.approx(-(0.25 * math.log(0.25) * 2 + 0.5 * math.log(0.5)))  # 1.0397
    assert math.isnan(h[3])  # never active: no distribution
    # mean over the neurons active at least once
    assert metrics.mean_class_entropy(counts) == pytest.approx((0 + math.log(2) + h[2]) / 3)
    # weighted by share of activations: 5, 2, 8 of 15
    assert metrics.mean_class_entropy(counts, weighted=True) == pytest.approx((5 * 0 + 2 * math.log(2) + 8 * h[2]) / 15)
    assert metrics.class_entropy(np.full((1, 10), 7))[0] == pytest.approx(math.log(10))  # uniform over 10 classes: ln 10
    assert math.isnan(metrics.mean_class_entropy(np.zeros((3, 2))))


def test_alive_fraction_of_hand_made_counts():
    assert metrics.alive_fraction([0, 3, 0, 1]) == 0.5
    assert metrics.alive_fraction([0, 3, 0, 1], threshold=1) == 0.25  # the reference's "> threshold" form
    assert metrics.alive_fraction([0, 0]) == 0.0
    assert metrics.alive_fraction([]) == 0.0


def test_snapshot_statistics_use_only_seen_classes():
    from sdmcl.analysis.neurons import snapshot_stats

    # 3 classes, only classes 0 and 1 seen (10 and 6 samples); 4 neurons
    snap = {"train_counts": np.array([[10, 3, 0, 0], [0, 3, 6, 0], [0, 0, 0, 0]]), "train_samples": np.array([10, 6, 0])}
    st = snapshot_stats(snap, "train")
    assert st["alive_fraction"] == 0.75
    assert st["classes"] == 2 and st["samples"] == 16
    assert st["mean_class_entropy"] == pytest.approx(math.log(2) / 3)  # entropies 0, ln 2, 0
    assert st["active_per_input"] == pytest.approx(22 / 16)


def test_silence_bins():
    assert list(silence_bin(np.array([-1, 0, 1, 2, 3, 4, 7, 8, 1000]))) == [-1, 0, 1, 2, 2, 3, 3, 4, 10]
    assert [silence_bin_range(b) for b in (-1, 0, 1, 2, 3)] == [(-1, -1), (0, 0), (1, 1), (2, 3), (4, 7)]


def test_append_log_truncates_to_the_checkpointed_length(tmp_path):
    from sdmcl.train.investigations import AppendLog

    log = AppendLog(tmp_path / "x.csv", ["a", "b"])
    log.open(None)
    log.write([[1, 0.5]])
    at_checkpoint = log.flush()
    log.write([[2, 0.25], [3, 0.125]])
    log.flush()
    log.close()
    again = AppendLog(tmp_path / "x.csv", ["a", "b"])
    again.open(at_checkpoint)
    again.write([[4, 1.0]])
    again.close()
    assert (tmp_path / "x.csv").read_text().splitlines() == ["a,b", "1,0.5", "4,1"]


# ---------------------------------------------------------------- config


def small_raw(tmp_path, **sections):
    raw = {
        "name": "inv",
        "data": {"source": "digits"},
        "model": {"name": "sdmlp", "neurons": 64, "k": 4, "gaba_switch_activations": 300},
        "optim": {"name": "sgd", "lr": 0.2},
        "train": {"epochs_per_task": 2, "batch_size": 64, "eval_every": 1, "threads": 1},
        "benchmark": {"num_tasks": 2},
        "output": {"dir": str(tmp_path / "runs"), "progress": False, "plots": False},
    }
    for key, value in sections.items():
        if value is None:
            raw.pop(key, None)
        elif key in ("model", "optim"):  # a whole section replaces the default one
            raw[key] = value
        else:
            raw[key] = {**raw.get(key, {}), **value}
    return raw


def test_investigate_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="investigate.activations_every: must be >= 0"):
        parse_config(small_raw(tmp_path, investigate={"activations_every": -1}))
    with pytest.raises(ConfigError, match="investigate.update_norms_every: must be >= 1"):
        parse_config(small_raw(tmp_path, investigate={"update_norms_every": 0}))
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config(small_raw(tmp_path, investigate={"activation_every": 2}))
    with pytest.raises(ConfigError, match="no single hidden layer"):
        parse_config(small_raw(tmp_path, model={"name": "fly", "kenyon_cells": 100}, optim=None, investigate={"activations_every": 1}))
    # off by default; turning it on gives the run a directory of its own, turning it off does not move old runs
    plain = parse_config(small_raw(tmp_path))
    off = parse_config(small_raw(tmp_path, investigate={"receptive_fields": 3}))
    on = parse_config(small_raw(tmp_path, investigate={"activations_every": 1}))
    assert not plain.investigate.enabled()
    assert plain.stamp() == off.stamp() != on.stamp()


def test_investigate_keys_are_overrides_of_experiment_files():
    from sdmcl.experiment import expand

    runs = expand({"name": "e", "data": {"source": "digits"}, "variants": {"a": {}, "b": {"model.k": 5}}},
                  ["investigate.activations_every=2", "investigate.update_norms=true", "augment.flip=0.5"])
    assert all(r.cfg.investigate.activations_every == 2 and r.cfg.investigate.update_norms for r in runs)


# ---------------------------------------------------------------- snapshots written by a run


class StepRecorder(Callback):
    """Test-only: the address matrix and the activity counter after every step."""

    name = "recorder"

    def on_run_start(self, engine, resumed):
        self.W = [engine.model.addresses.weight.detach().clone()]
        self.active = []  # per step: neurons active for some input of the batch
        self.prev = engine.model.activity_window.clone()

    def after_step(self, engine):
        self.W.append(engine.model.addresses.weight.detach().clone())
        now = engine.model.activity_window.clone()
        self.active.append((now - self.prev).numpy() > 0)
        self.prev = now

    def on_evaluation(self, engine, entry):
        self.prev = engine.model.activity_window.clone()  # the engine has reset it


def run_with_recorder(cfg):
    rd = RunDir(run_dir_for(cfg))
    engine = Engine(prepare(cfg), rd, log=lambda s: None)
    rec = StepRecorder()
    engine.callbacks.append(rec)
    engine.step_callbacks.append(rec)
    with rd.locked():
        rd.create(cfg)
        engine.model.apply_constraints()
        engine.run(resume=False)
    return rd, rec


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_snapshots_match_counts_recomputed_from_the_final_model(tmp_path):
    cfg = parse_config(small_raw(tmp_path, investigate={"activations_every": 1, "receptive_fields": 5}))
    rd, summary = run(cfg, log=lambda s: None)
    inv = rd.path / "investigations"
    snaps = sorted((inv / "activations").glob("epoch_*.npz"))
    assert [p.name for p in snaps] == [f"epoch_{e:06d}.npz" for e in (1, 2, 3, 4)]
    last = dict(np.load(snaps[-1]))
    assert int(last["epoch"]) == 4 and int(last["task"]) == 1
    # independent recomputation: the final model on both tasks' training data
    prepared = prepare(cfg)
    model = build_model(cfg, prepared.input_dim, prepared.num_classes)
    model.load_state_dict(load_checkpoint(rd.model_path)["model"])
    model.eval()
    x = torch.cat([t.train_x for t in prepared.tasks])
    y = torch.cat([t.train_y for t in prepared.tasks])
    with torch.no_grad():
        active = (model.hidden(x) > 0).long()
    expected = torch.zeros(prepared.num_classes, 64, dtype=torch.long).index_add_(0, y, active).numpy()
    assert np.array_equal(last["train_counts"], expected)
    assert np.array_equal(last["train_samples"], np.bincount(y.numpy(), minlength=10))
    assert last["test_samples"].sum() == sum(len(t.test_y) for t in prepared.tasks)
    # receptive fields: the most used neurons' address rows, in order of use
    per_neuron = expected.sum(0)
    assert list(per_neuron[last["most_used"]]) == sorted(per_neuron, reverse=True)[:5]
    assert np.allclose(last["most_used_addresses"], model.addresses.weight.detach().numpy()[last["most_used"]])
    # the first task's snapshots count only the first task's classes
    first = dict(np.load(snaps[0]))
    c0 = prepared.tasks[0].classes
    assert first["train_samples"][[c for c in range(10) if c not in c0]].sum() == 0
    rows = read_csv(inv / "neurons.csv")
    assert [(r["epoch"], r["split"]) for r in rows[:2]] == [("1", "train"), ("1", "test")]
    final_train = rows[-2]
    assert float(final_train["alive_fraction"]) == pytest.approx((per_neuron > 0).mean())
    seen = last["train_samples"] > 0
    assert float(final_train["mean_class_entropy"]) == pytest.approx(metrics.mean_class_entropy(expected[seen].T), rel=1e-5)


def update_rows(tmp_path, optim, every=1, tasks=1):
    cfg = parse_config(small_raw(tmp_path, optim=optim, benchmark={"num_tasks": tasks},
                                 investigate={"update_norms": True, "update_norms_every": every}))
    rd, rec = run_with_recorder(cfg)
    return read_csv(rd.path / "investigations" / "update_norms.csv"), rec, rd


def test_update_norms_match_the_weights_step_by_step(tmp_path):
    rows, rec, rd = update_rows(tmp_path, {"name": "sgdm", "lr": 0.1, "momentum": 0.9}, every=2, tasks=2)
    steps = len(rec.W) - 1
    assert [int(r["step"]) for r in rows] == list(range(0, steps, 2))  # every second step
    for r in rows:
        t = int(r["step"])
        norms = torch.linalg.vector_norm(rec.W[t + 1] - rec.W[t], dim=1).numpy()
        active = rec.active[t]
        assert int(r["active"]) == active.sum() and int(r["inactive"]) == (~active).sum()
        if active.any():
            assert float(r["mean_norm_active"]) == pytest.approx(norms[active].mean(), rel=1e-4)
        if (~active).any():
            assert float(r["mean_norm_inactive"]) == pytest.approx(norms[~active].mean(), rel=1e-4, abs=1e-9)
    # after the GABA switch most neurons are silent in a batch, and momentum keeps moving them
    assert any(int(r["inactive"]) > 0 and int(r["inactive_moved"]) > 0 for r in rows)
    # the per-epoch table by silence length: the same neurons, binned by steps since last active
    by_silence = read_csv(rd.path / "investigations" / "update_norms_by_silence.csv")
    for group in ("active", "inactive"):
        assert sum(int(r["count"]) for r in by_silence if r["group"] == group) == sum(int(r[group]) for r in rows)
    # active again right after being active (silence 0): recomputed from the recorded activity
    both = sum(int((rec.active[t] & rec.active[t - 1]).sum()) for t in range(2, len(rec.active), 2))
    first = int(rec.active[0].sum())  # step 0: never active before
    zero = [r for r in by_silence if r["group"] == "active" and r["silence_min"] == "0"]
    never = [r for r in by_silence if r["group"] == "active" and r["silence_min"] == "-1"]
    assert sum(int(r["count"]) for r in zero) == both
    assert sum(int(r["count"]) for r in never) == first


def test_plain_sgd_leaves_inactive_neurons_exactly_still(tmp_path):
    rows, _, rd = update_rows(tmp_path, {"name": "sgd", "lr": 0.2})
    silent = [r for r in rows if int(r["inactive"]) > 0]
    assert silent, "the GABA switch should leave some neurons silent in a batch"
    # a zero gradient moves nothing; when most rows are active the step renormalises every
    # row, which moves an unchanged float32 unit row by at most a few ulp (< 1e-7)
    assert all(float(r["max_norm_inactive"]) < 1e-7 and int(r["inactive_moved"]) == 0 for r in silent)
    assert any(float(r["max_norm_inactive"]) == 0.0 for r in silent)  # row-sparse steps: bit-identical
    by_silence = read_csv(rd.path / "investigations" / "update_norms_by_silence.csv")
    assert {r["group"] for r in by_silence} == {"active", "inactive"}
    assert all(float(r["max_norm"]) < 1e-7 for r in by_silence if r["group"] == "inactive")


def test_investigations_do_not_change_results(tmp_path):
    a = run(parse_config(small_raw(tmp_path)), log=lambda s: None)[1]
    b = run(parse_config(small_raw(tmp_path, investigate={"activations_every": 1, "update_norms": True})), log=lambda s: None)[1]
    assert a["final_task_accuracy"] == b["final_task_accuracy"]
    assert a["fraction_dead"] == b["fraction_dead"]


def test_resumed_run_writes_the_same_investigation_files(tmp_path):
    """Killed (SIGKILL) while writing the checkpoint at the end of task 1 (epoch 3), so the
    files hold a whole epoch and a snapshot more than the checkpoint that survives (epoch 2):
    resumed, every investigation file equals the uninterrupted run's."""
    raw = small_raw(tmp_path, optim={"name": "adam", "lr": 0.01}, benchmark={"num_tasks": 2}, train={"epochs_per_task": 3},
                    investigate={"activations_every": 2, "update_norms": True}, output={"checkpoint_every": 1})
    run(parse_config({**raw, "output": {**raw["output"], "dir": str(tmp_path / "a")}}), log=lambda s: None)
    cfg_b = {**raw, "output": {**raw["output"], "dir": str(tmp_path / "b")}}
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(cfg_b))
    env = {**os.environ, "SDMCL_FAULT": "checkpoint:3"}  # checkpoints after epochs 1, 2, 3: killed before the third replaces the second
    killed = subprocess.run([sys.executable, "-m", "sdmcl.cli", "run", str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0
    (b,) = (tmp_path / "b").iterdir()
    assert (b / "investigations" / "activations" / "epoch_000003.npz").is_file() and not (b / "summary.json").exists()
    run(parse_config(cfg_b), resume=True, log=lambda s: None)
    (a,) = (tmp_path / "a").iterdir()
    files = sorted(p.relative_to(a) for p in (a / "investigations").rglob("*") if p.is_file())
    assert len(files) >= 6
    for rel in files:
        if rel.suffix == ".npz":
            za, zb = np.load(a / rel), np.load(b / rel)
            assert za.files == zb.files and all(np.array_equal(za[k], zb[k]) for k in za.files), rel
        else:
            assert (a / rel).read_text() == (b / rel).read_text(), rel
    assert sorted(p.relative_to(b) for p in (b / "investigations").rglob("*") if p.is_file()) == files

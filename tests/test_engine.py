"""The engine end to end on the offline digits data: outputs, determinism, pretrained start."""

import json

import numpy as np
import torch

from sdmcl.config import parse_config
from sdmcl.train.checkpoint import load_checkpoint
from sdmcl.train.engine import run


def small_cfg(tmp_path, **over):
    raw = {
        "name": "t",
        "data": {"source": "digits"},
        "model": {"name": "sdmlp", "neurons": 64, "k": 4, "gaba_switch_activations": 300},
        "optim": {"name": "sgd", "lr": 0.2},
        "train": {"epochs_per_task": 3, "batch_size": 64, "eval_every": 1},
        "output": {"dir": str(tmp_path / "runs"), "progress": False, "plots": False},
    }
    for key, value in over.items():
        sec, k = key.split("__")
        raw.setdefault(sec, {})[k] = value
    return parse_config(raw)


def test_run_writes_every_output(tmp_path):
    cfg = small_cfg(tmp_path, output__plots=True)
    rd, summary = run(cfg, log=lambda s: None)
    assert rd.path.name == f"t-{cfg.stamp()}"
    for name in ("config.yaml", "metrics.jsonl", "accuracy_matrix.csv", "summary.json", "model.pt", "checkpoints/last.pt",
                 "plots/task_accuracy.png", "plots/accuracy_matrix.png"):
        assert (rd.path / name).is_file(), name
    lines = [json.loads(x) for x in (rd.path / "metrics.jsonl").read_text().splitlines()]
    # 5 tasks × 3 epochs: evaluations after epochs 1, 2 (seen tasks) and at each task end (all tasks)
    assert len(lines) == 15
    assert [len(x["task_accuracy"]) for x in lines[:3]] == [1, 1, 5]
    R = np.loadtxt(rd.path / "accuracy_matrix.csv", delimiter=",", skiprows=1, usecols=range(1, 6))
    assert R.shape == (5, 5)
    assert np.isclose(summary["final_average_accuracy"], R[-1].mean(), atol=1e-6)
    assert 0 <= summary["fraction_dead"] <= 1
    # active neurons per input recomputed independently from the saved model on all test data
    from sdmcl.train.engine import build_model, prepare

    prepared = prepare(cfg)
    model = build_model(cfg, prepared.input_dim, prepared.num_classes)
    model.load_state_dict(load_checkpoint(rd.model_path)["model"])
    model.eval()
    x = torch.cat([t.test_x for t in prepared.tasks])
    with torch.no_grad():
        expected = float((model.hidden(x) > 0).sum(1).float().mean())
    assert abs(summary["active_per_input"] - expected) < 1e-6
    assert 0 < expected < 64
    # the last row of R recomputed from raw test inputs: the engine feeds the model inputs
    # it prepared once (relu + L2 norm), the model's own forward prepares them per batch
    with torch.no_grad():
        final = [float((model(t.test_x).argmax(1) == t.test_y).float().mean()) for t in prepared.tasks]
    assert np.allclose(R[-1], final, atol=1e-6)


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = load_checkpoint(run(small_cfg(tmp_path / "a"), log=lambda s: None)[0].model_path)["model"]
    b = load_checkpoint(run(small_cfg(tmp_path / "b"), log=lambda s: None)[0].model_path)["model"]
    c_cfg = small_cfg(tmp_path / "c")
    c_cfg.seed = 1
    c = load_checkpoint(run(c_cfg, log=lambda s: None)[0].model_path)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["addresses.weight"], c["addresses.weight"])


def test_finished_run_is_reused(tmp_path):
    cfg = small_cfg(tmp_path)
    rd, s1 = run(cfg, log=lambda s: None)
    msgs = []
    rd2, s2 = run(cfg, log=msgs.append)
    assert rd2.path == rd.path and s1 == s2 and "already finished" in msgs[0]


def test_continual_run_from_pretrained_checkpoint(tmp_path):
    # pretrain jointly on all 10 classes, then start a continual run: new head, counters kept
    pre_cfg = small_cfg(tmp_path, benchmark__joint=True)
    pre_dir, _ = run(pre_cfg, log=lambda s: None)
    pre = load_checkpoint(pre_dir.model_path)["model"]
    assert pre["topk.gaba_counters"].sum() > 0

    from sdmcl.train.engine import Engine, prepare
    from sdmcl.train.rundir import RunDir

    cfg = small_cfg(tmp_path)
    cfg.init_from = str(pre_dir.path)
    engine = Engine(prepare(cfg), RunDir(tmp_path / "x"), progress=False, log=lambda s: None)
    m = engine.model
    assert torch.equal(m.topk.gaba_counters, pre["topk.gaba_counters"])
    assert torch.equal(m.addresses.weight, pre["addresses.weight"])
    assert m.values.weight.shape == (10, 64) and not torch.equal(m.values.weight, pre["values.weight"])
    assert (m.values.weight >= 0).all()
    assert engine.optimizer.state == {}  # optimizer state starts fresh


def test_pretrained_with_other_model_config_is_refused(tmp_path):
    import pytest

    from sdmcl.errors import CheckpointError

    pre_dir, _ = run(small_cfg(tmp_path, benchmark__joint=True), log=lambda s: None)
    cfg = small_cfg(tmp_path, model__k=5)
    cfg.init_from = str(pre_dir.path)
    with pytest.raises(CheckpointError, match=r"model\.k \(4 vs 5\)"):
        run(cfg, log=lambda s: None)


def test_callbacks_see_every_hook_in_order(tmp_path, monkeypatch):
    from sdmcl.train import engine as engine_mod
    from sdmcl.train.callbacks import Callback

    seen = []

    class Recorder(Callback):
        name = "recorder"

        def on_run_start(self, engine, resumed):
            seen.append(("run_start", resumed))

        def on_task_start(self, engine, task):
            seen.append(("task_start", task.index))

        def after_step(self, engine):
            seen.append("step")

        def on_epoch_end(self, engine, task, epoch_in_task):
            seen.append(("epoch_end", task.index, epoch_in_task))

        def on_evaluation(self, engine, entry):
            seen.append(("eval", entry["epoch"]))

        def on_task_end(self, engine, task, entry):
            seen.append(("task_end", task.index))

        def on_run_end(self, engine, summary):
            seen.append(("run_end", round(summary["final_average_accuracy"], 6)))

        def close(self):
            seen.append("close")

    monkeypatch.setattr(engine_mod, "build_callbacks", lambda cfg: [Recorder()])
    cfg = small_cfg(tmp_path, train__epochs_per_task=2, benchmark__num_tasks=2)
    _, summary = run(cfg, log=lambda s: None)
    non_steps = [s for s in seen if s != "step"]
    assert non_steps == [("run_start", False),
                         # an evaluation inside a task comes before the epoch's end hook; the task's
                         # final evaluation after it
                         ("task_start", 0), ("eval", 1), ("epoch_end", 0, 1), ("epoch_end", 0, 2), ("eval", 2), ("task_end", 0),
                         ("task_start", 1), ("eval", 3), ("epoch_end", 1, 1), ("epoch_end", 1, 2), ("eval", 4), ("task_end", 1),
                         ("run_end", round(summary["final_average_accuracy"], 6)), "close"]
    assert seen.count("step") == summary["steps"] > 0

"""Runs trained as one stack end where the same runs trained one by one end (up to float
summation order), each in its own run directory, resumable, and runs that cannot be
stacked still train (alone)."""

import json
from pathlib import Path

import pytest
import torch

from sdmcl.config import parse_config
from sdmcl.launch import resolve_stack, run_many, stack_key, train_one
from sdmcl.train.checkpoint import load_checkpoint
from sdmcl.train.stacked import run_in_lockstep


def config(out, seed, name=None, **changes):
    raw = {"name": name or f"r{seed}", "seed": seed, "data": {"source": "digits"},
           "model": {"name": "sdmlp", "neurons": 48, "k": 4, "gaba_switch_activations": 600},
           "optim": {"name": "sgd", "lr": 0.3}, "train": {"epochs_per_task": 2, "threads": 1, "batch_size": 64},
           "benchmark": {"num_tasks": 3}, "output": {"dir": str(out), "progress": False, "plots": False}}
    for key, value in changes.items():
        section, field = key.split("__")
        raw.setdefault(section, {})[field] = value
    return parse_config(raw)


def assert_same_run(a, b, atol=2e-6):
    ma = load_checkpoint(Path(a.run_dir) / "model.pt")["model"]
    mb = load_checkpoint(Path(b.run_dir) / "model.pt")["model"]
    assert ma.keys() == mb.keys()
    for key in ma:
        assert torch.allclose(ma[key].double(), mb[key].double(), atol=atol, rtol=1e-5), key
    assert a.summary["final_task_accuracy"] == pytest.approx(b.summary["final_task_accuracy"], abs=0.02)
    assert a.summary["epochs"] == b.summary["epochs"] and a.summary["steps"] == b.summary["steps"]
    lines = [Path(o.run_dir, "metrics.jsonl").read_text().splitlines() for o in (a, b)]
    assert len(lines[0]) == len(lines[1])
    for la, lb in zip(*lines):
        ea, eb = json.loads(la), json.loads(lb)
        assert ea["train_loss"] == pytest.approx(eb["train_loss"], rel=1e-5)


SPECS = [  # what may differ within a stack: seed, class order, lr, clip, k, T, λ
    {},
    {"optim__lr": 0.1, "model__k": 6, "optim__grad_clip": 0.5},
    {"model__gaba_switch_activations": 200, "benchmark__class_order": "seeded", "benchmark__class_order_seed": 3},
]


def stacked_and_alone(tmp_path, specs, **common):
    alone = [train_one(f"r{i}", config(tmp_path / "alone", i, **common, **spec)) for i, spec in enumerate(specs)]
    fns = [(lambda group, i=i, spec=spec: train_one(f"r{i}", config(tmp_path / "stack", i, **common, **spec), setup=group.join))
           for i, spec in enumerate(specs)]
    stacked = run_in_lockstep(fns)
    return alone, stacked


def test_stacked_runs_equal_runs_trained_alone(tmp_path):
    alone, stacked = stacked_and_alone(tmp_path, SPECS)
    for a, b in zip(alone, stacked):
        assert a.status == b.status == "finished", (a.message, b)
        assert a.run_dir != b.run_dir and Path(b.run_dir, "summary.json").is_file()
        assert_same_run(a, b)


def test_stacked_runs_with_ewc_equal_runs_trained_alone(tmp_path):
    specs = [{"regularizer__lam": 10.0, "regularizer__beta": 0.3}, {"regularizer__lam": 5.0, "regularizer__beta": 0.5}]
    alone, stacked = stacked_and_alone(tmp_path, specs, regularizer__name="ewc")
    for a, b in zip(alone, stacked):
        assert a.status == b.status == "finished"
        assert_same_run(a, b, atol=2e-5)


def test_a_run_that_cannot_stack_trains_alone_and_the_rest_still_stack(tmp_path):
    specs = [{}, {"optim__name": "adam", "optim__lr": 0.01}, {"model__k": 5}]
    logs = []
    fns = [(lambda group, i=i, spec=spec: train_one(f"r{i}", config(tmp_path, i, **spec), setup=group.join, log=logs.append))
           for i, spec in enumerate(specs)]
    outcomes = run_in_lockstep(fns)
    assert [o.status for o in outcomes] == ["finished"] * 3
    assert any("trains alone" in line and "adam" in line for line in logs)
    alone = train_one("r0", config(tmp_path / "alone", 0))
    assert_same_run(alone, outcomes[0])


def test_stopped_stack_resumes_to_the_same_end(tmp_path, monkeypatch):
    """A stack stopped by a signal after its first epoch resumes (stacked again) from each
    run's checkpoint and ends where the uninterrupted runs end."""
    import signal

    from sdmcl.train import stacked as stacked_module

    whole = run_in_lockstep([(lambda g, i=i: train_one(f"r{i}", config(tmp_path / "whole", i), setup=g.join)) for i in range(2)])
    calls = {"n": 0}
    original = stacked_module.train_stacked_epoch

    def stop_after_first(jobs, sparse_rows=None):
        out = original(jobs, sparse_rows)
        calls["n"] += 1
        if calls["n"] == 1:
            for engine, _, _ in jobs:
                engine.stop_signal = signal.SIGTERM
        return out

    monkeypatch.setattr(stacked_module, "train_stacked_epoch", stop_after_first)
    part = run_in_lockstep([(lambda g, i=i: train_one(f"r{i}", config(tmp_path / "part", i), setup=g.join)) for i in range(2)])
    assert [o.status for o in part] == ["stopped", "stopped"]
    monkeypatch.setattr(stacked_module, "train_stacked_epoch", original)
    resumed = run_in_lockstep([(lambda g, i=i: train_one(f"r{i}", config(tmp_path / "part", i), setup=g.join)) for i in range(2)])
    assert [o.status for o in resumed] == ["finished", "finished"]
    for a, b in zip(whole, resumed):
        assert_same_run(a, b, atol=1e-7)


def test_launcher_stacks_runs_of_the_same_shape(tmp_path, capsys):
    runs = [(f"r{i}", config(tmp_path, i, **spec)) for i, spec in enumerate(SPECS)]
    runs.append(("big", config(tmp_path, 0, name="big", model__neurons=64)))  # another shape: its own stack of one
    assert len({stack_key(cfg) for _, cfg in runs}) == 2
    report = run_many(runs, progress=False, stack=4)
    assert [o.status for o in report.outcomes] == ["finished"] * 4
    assert "3 runs of the same shapes, as one stack" in capsys.readouterr().out
    assert resolve_stack("auto", [cfg for _, cfg in runs]) == (32 if torch.cuda.is_available() else 1)
    with pytest.raises(Exception, match="--stack"):
        resolve_stack("0", [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stack_on_cuda_equals_runs_on_cpu(tmp_path):
    """On a GPU the stack (one dense batched product for all runs) ends where the runs
    trained alone on the CPU end."""
    alone = [train_one(f"r{i}", config(tmp_path / "cpu", i, train__device="cpu", **spec)) for i, spec in enumerate(SPECS)]
    fns = [(lambda g, i=i, spec=spec: train_one(f"r{i}", config(tmp_path / "gpu", i, train__device="cuda", **spec), setup=g.join))
           for i, spec in enumerate(SPECS)]
    for a, b in zip(alone, run_in_lockstep(fns)):
        assert b.status == "finished"
        assert_same_run(a, b, atol=1e-4)

"""NISPA as published: each mechanism against hand-computed expectations, and in the engine."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from sdmcl.data.benchmarks import Task, hold_out_validation
from sdmcl.errors import ConfigError
from sdmcl.models.base import TrainingRequest
from sdmcl.models.nispa import NISPA, NISPAConfig, a_f_schedule, max_phases, top_activation_units


def make_task(index, n=80, d=12, classes=(0, 1), val=20):
    g = torch.Generator().manual_seed(index)
    x = torch.rand(n + val, d, generator=g)
    y = torch.tensor(classes)[torch.randint(0, len(classes), (n + val,), generator=g)]
    return Task(index, classes, x[:n], y[:n], x[:n], y[:n], val_x=x[n:], val_y=y[n:])


def small(**kw):
    base = dict(hidden_sizes=[16, 16], density=0.5, phase_epochs=1, mask_seed=0)
    base.update(kw)
    return NISPA(NISPAConfig(**base), input_dim=12, num_classes=4)


def step(m, task, opt):
    m.train()
    loss = F.cross_entropy(m(task.train_x), task.train_y)
    opt.zero_grad()
    loss.backward()
    m.before_step()
    opt.step()
    m.apply_constraints()


def test_cosine_schedule_values():
    # a_f(t) = (1 + cos(pi t / 30)) / 2: 99.73% after the first phase, 50% at t = 15
    assert a_f_schedule(1, 30) == pytest.approx(0.5 * (1 + math.cos(math.pi / 30)))
    assert a_f_schedule(1, 30) == pytest.approx(0.997260, abs=1e-6)
    assert a_f_schedule(15, 30) == pytest.approx(0.5)
    # the 5% floor is first reached at t = 26 (4.32%): at most 26 phases per task
    assert a_f_schedule(25, 30) == pytest.approx(0.066987, abs=1e-6) and a_f_schedule(25, 30) > 0.05
    assert a_f_schedule(26, 30) == pytest.approx(0.043227, abs=1e-6)
    assert all(a_f_schedule(t + 1, 30) < a_f_schedule(t, 30) for t in range(1, 30))
    assert max_phases(30, 0.05) == 26 and max_phases(4, 0.05) == 4


def test_stable_unit_selection():
    act = torch.tensor([1.0, 4.0, 0.0, 3.0, 2.0])  # total 10
    assert top_activation_units(act, 0.6).tolist() == [False, True, False, True, False]  # 4 + 3 = 7 >= 6
    assert top_activation_units(act, 0.7).tolist() == [False, True, False, True, False]  # reaches 7 exactly
    assert top_activation_units(act, 0.71).tolist() == [False, True, False, True, True]  # + 2 = 9
    assert top_activation_units(act, 0.0).tolist() == [False, True, False, False, False]  # the unit that reaches it
    assert top_activation_units(torch.zeros(3), 0.5).sum() == 1  # all silent: one unit, as the authors' loop
    # in the model: earlier stable units stay candidates; output candidates are the seen classes
    m = small()
    task = make_task(0)
    m.on_task_start(task)
    m.stable1[3] = True
    m.select_candidates(task, 0.5)
    with torch.no_grad():
        acts = m.mean_activations(task.train_x)
    assert torch.allclose(acts[0], torch.relu(m.layers[0](task.train_x)).mean(0))
    for i, act in enumerate(acts):
        expected = top_activation_units(act, 0.5)
        if i == 1:
            expected[3] = True
        assert torch.equal(m.buf("candidate", i), expected)
    assert m.candidate2.tolist() == [True, True, False, False]


def test_frozen_weights_and_biases_do_not_move_under_adam():
    torch.manual_seed(0)
    m = small()
    task = make_task(0)
    m.on_task_start(task)
    m.candidate0[:8] = True
    m.candidate1[:5] = True
    m.candidate2[:2] = True
    m.drop_into_candidates()
    m.finish_task(task)  # no accepted phase: the current candidates become stable
    assert m.stable0[:8].all() and not m.stable0[8:].any()
    # frozen: stable target × stable source (every input for the first layer); biases of stable units
    assert torch.equal(m.freeze0, m.stable0[:, None].expand(16, 12))
    assert torch.equal(m.freeze1, m.stable1[:, None] & m.stable0[None, :])
    assert torch.equal(m.freeze2, m.stable2[:, None] & m.stable1[None, :])
    before = [(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in m.layers]
    task2 = make_task(1, classes=(2, 3))
    m.on_task_start(task2)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(3):
        step(m, task2, opt)
    for i, (layer, (w, b)) in enumerate(zip(m.layers, before)):
        frozen = m.buf("freeze", i)
        assert torch.equal(layer.weight[frozen], w[frozen])
        assert torch.equal(layer.bias[m.buf("freeze_bias", i)], b[m.buf("freeze_bias", i)])
        movable = m.buf("mask", i).bool() & ~frozen
        assert not torch.equal(layer.weight[movable], w[movable])  # the rest trains
        assert torch.all(layer.weight[m.buf("mask", i) == 0] == 0)  # absent connections stay 0


def test_rewiring_keeps_density_and_cuts_plastic_into_stable():
    m = NISPA(NISPAConfig(hidden_sizes=[60, 60, 60], density=0.3, mask_seed=1), input_dim=30, num_classes=6)
    task = make_task(0, d=30, classes=(0, 1))
    m.on_task_start(task)
    counts = [int(mk.sum()) for mk in m.masks()]
    m.select_candidates(task, 0.6)
    cands = m.candidates()
    dropped = m.drop_into_candidates()
    assert dropped[0] == 0 and all(d > 0 for d in dropped[1:])  # inputs are stable: nothing cut in layer 0
    for i in range(1, 4):
        cut = m.buf("mask", i).bool() & cands[i][:, None] & ~cands[i - 1][None, :]
        assert not cut.any()
    after_drop = [mk.clone() for mk in m.masks()]
    m.regrow(dropped, torch.Generator().manual_seed(0))
    assert [int(mk.sum()) for mk in m.masks()] == counts  # density exactly restored
    for i in range(4):
        grown = m.buf("mask", i).bool() & ~after_drop[i].bool()
        assert not (grown & cands[i][:, None]).any()  # new connections end in plastic units only
        # still nothing from plastic into candidates
        assert not (m.buf("mask", i).bool() & cands[i][:, None] & ~m.source_set(cands, i)[None, :]).any()
    for layer, mk in zip(m.layers, m.masks()):
        assert torch.all(layer.weight[mk == 0] == 0)


def test_silent_plastic_unit_gets_an_outgoing_connection_first():
    m = small(hidden_sizes=[6, 6], density=1.0)
    with torch.no_grad():
        m.mask1[:, 2] = 0.0  # plastic unit 2 of hidden layer 0 has no outgoing connection
        m.layers[1].weight[:, 2] = 0.0
        m.candidate1[:3] = True  # units 3..5 of layer 1 are plastic
    m.regrow([0, 1, 0], torch.Generator().manual_seed(0))
    assert int(m.mask1[:, 2].sum()) == 1 and int(m.mask1[3:, 2].sum()) == 1  # to a plastic target
    assert float(m.layers[1].weight.detach()[:, 2].abs().sum()) == 0.0  # such a connection starts at 0


def test_grown_weights_follow_the_layer_statistics():
    m = small(grow_init="normal")
    w = torch.zeros(200, 300)
    w[:, :150] = torch.randn(200, 150) * 0.3 + 0.1
    values = m.grow_values(w, 40000, torch.Generator().manual_seed(0))
    present = w[w != 0]
    assert float(values.mean()) == pytest.approx(float(present.mean()), abs=0.01)
    assert float(values.std()) == pytest.approx(float(present.std(correction=0)), rel=0.02)
    assert torch.equal(small(grow_init="zero").grow_values(w, 5, torch.Generator()), torch.zeros(5))
    u = small(grow_init="uniform").grow_values(w, 1000, torch.Generator().manual_seed(0))
    assert float(u.min()) >= float(w.min()) and float(u.max()) <= float(w.max())


def drive(m, task, accuracies):
    """Run phases of one epoch each with the given validation accuracies (%); the weights
    change every epoch. Returns the snapshots of (weights, masks) after each epoch's
    phase end and the requests."""
    accs = iter(accuracies)
    m.validation_accuracy = lambda t: next(accs)
    m.on_task_start(task)
    seen, requests = [], []
    for e in range(len(accuracies)):
        with torch.no_grad():
            for layer, mk in zip(m.layers, m.masks()):
                layer.weight.add_(0.01 * (e + 1) * mk)
        before_end = [(layer.weight.clone(), mk.clone()) for layer, mk in zip(m.layers, m.masks())]
        cands = [c.clone() for c in m.candidates()]
        seen.append((before_end, cands))
        req = m.on_epoch_end(task, e + 1)
        requests.append(req)
        if req is not None and req.end_task:
            break
    return seen, requests


def test_revert_to_previous_phase_on_accuracy_drop():
    m = small(reinit_plastic=False)
    task = make_task(0)
    # phases 1, 2 accepted (a drop at t <= 2 does not count), phase 3 drops 1.0 > 0.75 points
    seen, requests = drive(m, task, [80.0, 70.0, 79.0])
    assert [r.reset_optimizer for r in requests[:2]] == [True, True] and not requests[0].end_task
    assert requests[2].end_task and len(requests) == 3
    assert bool(m.finished) and float(m.accepted_acc) == 80.0
    # the model is the one phase 2 ended with (its connections before phase 2's rewiring) ...
    weights_phase2, _ = seen[1]
    for layer, mk, (w, mask) in zip(m.layers, m.masks(), weights_phase2):
        assert torch.equal(mk, mask)
        assert torch.equal(layer.weight, w)
    # ... and its stable units are the candidates it was trained with (chosen after phase 1)
    for i, c in enumerate(seen[1][1]):
        assert torch.equal(m.buf("stable", i), c)
    m.on_task_end(task)  # nothing more happens
    assert torch.equal(m.layers[0].weight, weights_phase2[0][0])


def test_no_stop_within_threshold_and_stop_at_floor():
    m = small(a_f_period=4.0, a_f_floor=0.05, reinit_plastic=False)  # a_f: 0.85, 0.5, 0.15, 0.0
    seen, requests = drive(m, make_task(0), [50.0, 50.0, 49.5, 49.5])  # 0.5-point drops are within 0.75
    assert [r.end_task for r in requests] == [False, False, False, True]
    assert int(m.phase) == 4 and bool(m.finished)
    # reverted to phase 3's model, with the candidates chosen after phase 2
    for layer, (w, _) in zip(m.layers, seen[2][0]):
        assert torch.equal(layer.weight, w)
    for i, c in enumerate(seen[2][1]):
        assert torch.equal(m.buf("stable", i), c)


def test_phase_keeps_its_best_epoch():
    m = small(phase_epochs=3, reinit_plastic=False)
    task = make_task(0)
    accs = iter([60.0, 75.0, 70.0])
    m.validation_accuracy = lambda t: next(accs)
    m.on_task_start(task)
    weights = []
    for e in range(3):
        with torch.no_grad():
            m.layers[0].weight.add_(m.mask0)
        weights.append(m.layers[0].weight.clone())
        req = m.on_epoch_end(task, e + 1)
    assert isinstance(req, TrainingRequest) and req.reset_optimizer
    assert float(m.accepted_acc) == 75.0
    assert torch.equal(m.prev_w0, weights[1])  # the phase's model is its best (second) epoch


def test_reinit_of_plastic_units_at_task_end():
    m = small(hidden_sizes=[200, 200], density=1.0)
    task = make_task(0)
    m.on_task_start(task)
    m.candidate0[:50] = True
    m.candidate1[:40] = True
    m.candidate2[:2] = True
    m.drop_into_candidates()
    before = [(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in m.layers]
    m.finish_task(task)
    for i, (layer, (w, b)) in enumerate(zip(m.layers, before)):
        frozen, present = m.buf("freeze", i), m.buf("mask", i).bool()
        assert torch.equal(layer.weight[frozen], w[frozen])
        fresh = present & ~frozen
        assert not torch.any(layer.weight[fresh] == w[fresh])
        assert torch.all(layer.bias[~m.buf("freeze_bias", i)] == 0)
        assert torch.equal(layer.bias[m.buf("freeze_bias", i)], b[m.buf("freeze_bias", i)])
        assert torch.all(layer.weight[~present] == 0)
    # Kaiming normal, fan-out: std sqrt(2 / out_features)
    assert float(m.layers[1].weight.detach()[m.mask1.bool() & ~m.freeze1].std()) == pytest.approx(math.sqrt(2 / 200), rel=0.05)


def test_validation_split_is_held_out_and_seeded():
    task = make_task(0, val=0)
    (a,) = hold_out_validation([task], 0.25, seed=7)
    (b,) = hold_out_validation([task], 0.25, seed=7)
    (c,) = hold_out_validation([task], 0.25, seed=8)
    assert len(a.val_y) == 20 and len(a.train_y) == 60
    assert torch.equal(a.val_x, b.val_x) and not torch.equal(a.val_x, c.val_x)
    rows = {tuple(r.tolist()) for r in a.train_x}
    assert not any(tuple(r.tolist()) in rows for r in a.val_x)  # disjoint
    assert torch.equal(a.test_x, task.test_x)


def test_config_checks():
    from sdmcl.config import parse_config

    base = {"data": {"source": "digits"}, "model": {"name": "nispa"}, "optim": {"name": "adam", "lr": 0.01}}
    with pytest.raises(ConfigError, match="train.validation_fraction"):
        parse_config(base)
    with pytest.raises(ConfigError, match="optim.weight_decay"):
        parse_config({**base, "optim": {"name": "adam", "weight_decay": 0.01}, "train": {"validation_fraction": 0.1}})
    with pytest.raises(ConfigError, match="model.a_f_floor"):
        parse_config({**base, "model": {"name": "nispa", "a_f_floor": 0.999}, "train": {"validation_fraction": 0.1}})


def nispa_config(out_dir, **model):
    return {
        "name": "n", "data": {"source": "digits"},
        "model": {"name": "nispa", "hidden_sizes": [32, 32], "phase_epochs": 2, "mask_seed": 0, **model},
        "optim": {"name": "adam", "lr": 0.01, "grad_clip": None},
        "train": {"epochs_per_task": 30, "batch_size": 64, "validation_fraction": 0.1, "eval_every": 2, "threads": 1},
        "benchmark": {"num_tasks": 2},
        "output": {"dir": str(out_dir), "plots": False, "progress": False},
    }


def outputs(rd):
    from sdmcl.train.checkpoint import load_checkpoint

    summary = json.loads(rd.summary_path.read_text())
    return (load_checkpoint(rd.model_path)["model"], rd.metrics_path.read_text(),
            {k: v for k, v in summary.items() if k not in ("train_seconds", "seconds_per_epoch", "provenance")})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from sdmcl.config import parse_config
    from sdmcl.train.engine import run

    rd, _ = run(parse_config(nispa_config(tmp_path_factory.mktemp("nispa"))), log=lambda s: None)
    return rd


def test_nispa_in_the_engine_ends_tasks_by_itself(uninterrupted):
    rd = uninterrupted
    summary = json.loads(rd.summary_path.read_text())
    lines = [json.loads(x) for x in rd.metrics_path.read_text().splitlines()]
    task_ends = [[h for h in lines if h["task"] == t][-1] for t in range(2)]
    per_task = [h["epoch_in_task"] for h in task_ends]
    # every task ends on a phase boundary, after >= 3 phases (the first stop is possible after
    # phase 3), at the latest at the 30-epoch cap; some end before it
    assert all(e % 2 == 0 and 6 <= e <= 30 for e in per_task) and min(per_task) < 30
    assert sum(per_task) == summary["epochs"] == task_ends[-1]["epoch"]
    assert summary["task_incremental"] is False and summary["label_informed"] is False
    assert 0 < task_ends[0]["stable_units"][0] <= task_ends[-1]["stable_units"][0]
    assert summary["final_task_aware_accuracy"] > 0.8


def test_stopped_mid_phase_resumes_bit_identical(tmp_path, uninterrupted, monkeypatch):
    """A run stopped by a signal inside task 2 (its checkpoint holds NISPA's phase state:
    snapshots, candidates, counters) and resumed ends exactly as the uninterrupted run."""
    from sdmcl.config import parse_config
    from sdmcl.train.engine import StopRequested, run

    cfg = parse_config(nispa_config(uninterrupted.path.parent))
    cfg.output.dir = str(tmp_path)
    done = json.loads(uninterrupted.summary_path.read_text())
    lines = [json.loads(x) for x in uninterrupted.metrics_path.read_text().splitlines()]
    steps_per_epoch = done["steps"] // done["epochs"]
    task0_epochs = [h for h in lines if h["task"] == 0][-1]["epoch"]
    # SIGINT during task 2's third epoch: the run stops after it, in the middle of phase 2
    monkeypatch.setenv("SDMCL_FAULT", f"step:{steps_per_epoch * (task0_epochs + 2) + 2}:SIGINT")
    with pytest.raises(StopRequested):
        run(cfg, log=lambda s: None)
    monkeypatch.delenv("SDMCL_FAULT")
    from sdmcl.train.checkpoint import load_checkpoint

    (rd_path,) = tmp_path.iterdir()
    position = load_checkpoint(rd_path / "checkpoints" / "last.pt")["position"]
    assert position["next_task"] == 1 and position["next_epoch_in_task"] == 3
    rd, _ = run(cfg, resume=True, log=lambda s: None)
    (ma, la, sa), (mb, lb, sb) = outputs(rd), outputs(uninterrupted)
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert la == lb and sa == sb


def test_multi_head_runs_are_marked_task_incremental(tmp_path, capsys):
    from sdmcl.config import parse_config
    from sdmcl.launch import print_run
    from sdmcl.report import comparison_table
    from sdmcl.train.engine import run

    cfg = parse_config(nispa_config(tmp_path, multi_head=True))
    rd, summary = run(cfg, log=lambda s: None)
    assert summary["task_incremental"] is True
    assert summary["final_average_accuracy"] == pytest.approx(summary["final_task_aware_accuracy"])
    assert summary["final_class_incremental_accuracy"] < summary["final_average_accuracy"]
    print_run("nispa", rd, summary)
    assert "nispa [task-IL]: final average accuracy" in capsys.readouterr().out
    assert "n [task-IL]" in comparison_table([(cfg, summary)])


def test_a_cap_inside_a_phase_keeps_the_task_and_warns(tmp_path):
    from sdmcl.config import parse_config
    from sdmcl.train.engine import run

    raw = nispa_config(tmp_path, phase_epochs=5)
    raw["train"].update(epochs_per_task=7, eval_every=0)  # each task ends 2 epochs into its second phase
    rd, summary = run(parse_config(raw), log=lambda s: None)
    lines = [json.loads(x) for x in rd.metrics_path.read_text().splitlines()]
    assert summary["epochs"] == 14
    assert lines[0]["stable_units"][0] > 0  # the current candidates became stable
    first, second = lines[0]["task_aware_accuracy"][0], lines[1]["task_aware_accuracy"][0]
    assert first > 0.9 and second == first  # task 1 is kept, frozen through task 2
    (warning,) = summary["warnings"]
    assert warning.startswith("NISPA: train.epochs_per_task ended tasks before their phases did")
    assert "26 phases × model.phase_epochs = 130 epochs" in warning

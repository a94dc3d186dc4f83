"""Options that reproduce the reference implementation, checked against hand-computed
expectations: GABA counting schedule, k schedule after init_from, bias clamping, metric
definitions, defaults, and the pitfall warnings."""

import json

import numpy as np
import pytest
import torch

from sdmcl import metrics
from sdmcl.config import parse_config
from sdmcl.models.mlp import ReLUMLPConfig, TopKMLPConfig, build_relu, build_topk
from sdmcl.models.sdmlp import SDMLP, SDMLPConfig
from sdmcl.models.topk import TopK, reference_counting_passes
from sdmcl.train.engine import Engine, prepare, run
from sdmcl.train.optim import build_optimizer
from sdmcl.train.pitfalls import relu_removed_share
from sdmcl.train.rundir import RunDir

# the first two Split Digits tasks: 288 training and 72 test images each
N_TRAIN, N_TEST = 288, 72


def digits_cfg(tmp_path, model=None, regularizer=None, **train):
    raw = {
        "name": "f",
        "data": {"source": "digits"},
        "benchmark": {"num_tasks": 2},
        "model": model or {"name": "sdmlp", "neurons": 16, "k": 2, "gaba_switch_activations": 300},
        "optim": {"name": "sgd", "lr": 0.1},
        "train": {"epochs_per_task": 2, "batch_size": 64, "eval_every": 1, **train},
        "output": {"dir": str(tmp_path / "runs"), "progress": False, "plots": False},
    }
    if regularizer:
        raw["regularizer"] = regularizer
    return parse_config(raw)


# ---------------------------------------------------------------- GABA counting


H = torch.tensor([[3.0, -1.0, 5.0, 1.0, 2.0]])


def test_topk_counts_evaluation_passes_only_inside_reference_passes():
    ref = TopK(5, 2, "gaba_switch", gaba_switch_activations=10, gaba_counting="reference")
    ours = TopK(5, 2, "gaba_switch", gaba_switch_activations=10)
    for act in (ref, ours):
        act.eval()
        act(H)  # an evaluation pass outside the block never counts
        assert act.gaba_counters.sum() == 0
        with reference_counting_passes(act):
            act(H)  # g = −1: relu(r + v_3) with v_3 = 2 → every neuron with r > −2 is active: all 5
    assert ref.gaba_counters.tolist() == [1, 1, 1, 1, 1]
    assert ours.gaba_counters.sum() == 0
    assert not ref.counting_eval_pass  # the block restores the default


def always_active(model_over=None):
    # T so large that g = −1 throughout: every neuron is active for every input, so each
    # counter equals the number of samples that went through the layer in counted passes
    return {"name": "sdmlp", "neurons": 16, "k": 2, "gaba_switch_activations": 10**9, **(model_over or {})}


@pytest.mark.parametrize("counting", ["training", "reference"])
def test_gaba_counters_follow_the_references_schedule_of_passes(tmp_path, counting):
    cfg = digits_cfg(tmp_path, model=always_active({"gaba_counting": counting}),
                     regularizer={"name": "ewc", "lam": 1.0, "beta": 0.005})
    rd, summary = run(cfg, log=lambda s: None)
    counters = torch.load(rd.model_path, weights_only=False)["model"]["topk.gaba_counters"]
    training = 2 * N_TRAIN + 2 * N_TRAIN  # 2 tasks × 2 epochs
    if counting == "training":
        expected = training
    else:
        # task 0: evaluation after epoch 1 and at its end, on its own test set (the later
        # task's test set, evaluated for the accuracy matrix, does not count); then the EWC
        # importance passes on its 288 training images (6 batches of 512 hold them all);
        # task 1: two evaluations on both tasks' test sets; no importance passes after the
        # last task (the reference computed them when a next task started)
        expected = training + 2 * N_TEST + N_TRAIN + 2 * (2 * N_TEST)
    assert counters.tolist() == [expected] * 16


def test_reference_counting_with_fewer_evaluations(tmp_path):
    # eval_every 0: evaluations only at task ends; MAS passes use 2 batches of 100
    cfg = digits_cfg(tmp_path, model=always_active({"gaba_counting": "reference"}),
                     regularizer={"name": "mas", "lam": 1.0, "batches": 2, "batch_size": 100}, eval_every=0)
    rd, _ = run(cfg, log=lambda s: None)
    counters = torch.load(rd.model_path, weights_only=False)["model"]["topk.gaba_counters"]
    assert counters.tolist() == [4 * N_TRAIN + N_TEST + 200 + 2 * N_TEST] * 16


def test_topk_mlp_reference_counting_and_default_speed_path_unchanged():
    torch.manual_seed(0)
    m = build_topk(TopKMLPConfig(neurons=8, k=2, k_approach="gaba_switch", gaba_switch_activations=10**9,
                                 gaba_counting="reference"), 4, 3)
    m.eval()
    x = torch.rand(5, 4)
    a = m.hidden(x)
    assert m.activation.gaba_counters.sum() == 0
    with reference_counting_passes(m):
        b = m.hidden(x)
    assert torch.equal(a, b)  # counting does not change this pass's output
    assert m.activation.gaba_counters.tolist() == (b > 0).sum(0).tolist()


# ---------------------------------------------------------------- k schedule after init_from


def test_init_from_continues_the_k_schedule_at_k_min(tmp_path):
    lin = {"name": "sdmlp", "neurons": 16, "k": 2, "k_approach": "linear_decay_mask", "k_transition_epochs": 3}
    pre_cfg = digits_cfg(tmp_path, model=lin, epochs_per_task=4)
    pre_cfg.benchmark.joint, pre_cfg.benchmark.num_tasks = True, None
    pre_dir, _ = run(pre_cfg, log=lambda s: None)
    from sdmcl.train.checkpoint import load_checkpoint

    assert load_checkpoint(pre_dir.model_path)["epochs_trained"] == 4
    seen = []

    def continual(restart):
        cfg = digits_cfg(tmp_path, model=lin)
        cfg.init_from = str(pre_dir.path)
        cfg.train.restart_k_schedule = restart
        engine = Engine(prepare(cfg), RunDir(tmp_path / f"c{restart}"), progress=False, log=lambda s: None)
        engine.train_epoch(engine.tasks[0], 0)  # the first continual epoch
        seen.append(engine.model.topk.current_k())
        return engine

    engine = continual(False)
    assert seen[-1] == 2  # pretrained for 4 epochs, past its 3-epoch decay: k = k_min at once
    engine.state.epochs_done = 3  # as the loop counts them
    assert engine.checkpoint_payload(full=False)["epochs_trained"] == 4 + 3
    continual(True)
    assert seen[-1] == 16  # the schedule restarts: k = k_max (all neurons) in epoch 0


# ---------------------------------------------------------------- biases


def test_positive_weights_clamp_biases_unless_signed_biases_are_asked_for():
    def stepped(**kw):
        torch.manual_seed(0)
        m = SDMLP(SDMLPConfig(neurons=8, k=2, k_approach="mask", bias=True, output_bias=True, **kw), 4, 3)
        with torch.no_grad():
            m.addresses.bias.fill_(-0.5)
            m.values.bias.copy_(torch.tensor([-1.0, 0.5, -2.0]))
        m.apply_constraints()
        return m

    m = stepped()
    assert m.addresses.bias.tolist() == [0.0] * 8 and m.values.bias.tolist() == [0.0, 0.5, 0.0]
    signed = stepped(positive_biases=False)
    assert signed.addresses.bias.tolist() == [-0.5] * 8 and signed.values.bias.tolist() == [-1.0, 0.5, -2.0]
    m.reset_head(5)  # a new head is constrained too
    assert (m.values.bias >= 0).all() and (m.values.weight >= 0).all()


def test_mlp_hidden_and_output_bias_are_separate():
    relu = build_relu(ReLUMLPConfig(neurons=6, output_bias=False), 4, 3)
    assert relu.fc1.bias is not None and relu.fc2.bias is None
    topk = build_topk(TopKMLPConfig(neurons=6, k=2, bias=False), 4, 3)
    assert topk.fc1.bias is None and topk.fc2.bias is not None


# ---------------------------------------------------------------- metrics


def test_pooled_accuracy_weights_tasks_by_test_size():
    # 0.5 of 100 and 1.0 of 300: (50 + 300) / 400 = 0.875; the mean over tasks is 0.75
    assert metrics.pooled_accuracy([0.5, 1.0], [100, 300]) == pytest.approx(0.875)
    assert metrics.pooled_accuracy([0.2, 0.4, 0.9], [10, 10, 10]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        metrics.pooled_accuracy([0.5], [1, 2])


def test_fraction_dead_by_summed_activation():
    # summed activations: 0 (dead), 5e-5 (< 1e-4: dead by the reference, alive by count), 1e-4, 2.0
    sums = [0.0, 5e-5, 1e-4, 2.0]
    assert metrics.fraction_dead_by_activation(sums) == 0.5
    assert metrics.fraction_dead_by_activation(sums, threshold=3.0) == 1.0
    assert metrics.fraction_dead([0, 3, 1, 7]) == 0.25  # the count definition: never active


def test_summary_has_both_accuracies_and_the_references_dead_neurons(tmp_path):
    cfg = digits_cfg(tmp_path)
    rd, summary = run(cfg, log=lambda s: None)
    R = np.loadtxt(rd.path / "accuracy_matrix.csv", delimiter=",", skiprows=1, usecols=range(1, 3))
    assert summary["final_average_accuracy"] == pytest.approx(R[-1].mean(), abs=1e-6)
    # equal test sets (72 each): pooled equals the mean
    assert summary["final_pooled_accuracy"] == pytest.approx(R[-1].mean(), abs=1e-6)
    assert summary["warnings"] == []
    for key in ("fraction_dead_reference_train", "fraction_dead_reference_test"):
        assert 0 <= summary[key] <= 1
    # recompute the test definition from the saved model: summed activation over both tasks' test sets
    from sdmcl.train.checkpoint import load_checkpoint
    from sdmcl.train.engine import build_model

    p = prepare(cfg)
    model = build_model(cfg, p.input_dim, p.num_classes)
    model.load_state_dict(load_checkpoint(rd.model_path)["model"])
    model.eval()
    with torch.no_grad():
        sums = model.hidden(torch.cat([t.test_x for t in p.tasks])).sum(0)
    assert summary["fraction_dead_reference_test"] == pytest.approx(float((sums < 1e-4).float().mean()))


def test_reference_train_dead_neurons_per_epoch(tmp_path):
    # the window holds the summed activations of the epoch's training samples
    cfg = digits_cfg(tmp_path, epochs_per_task=1)
    rd, _ = run(cfg, log=lambda s: None)
    lines = [json.loads(x) for x in (rd.path / "metrics.jsonl").read_text().splitlines()]
    assert all("fraction_dead_reference_train" in e and "fraction_dead_reference_test" in e for e in lines)
    # by the count definition a neuron never active is dead; by the sum one too, so sum ≥ count
    assert all(e["fraction_dead_reference_train"] >= e["fraction_dead"] for e in lines)


# ---------------------------------------------------------------- defaults


def test_adamw_weight_decay_defaults_to_the_references_and_others_to_zero(tmp_path):
    adamw = parse_config({"optim": {"name": "adamw", "lr": 0.001}})
    assert adamw.optim.weight_decay == 0.001
    assert parse_config({"optim": {"name": "adam", "lr": 0.001}}).optim.weight_decay == 0.0
    assert parse_config({"optim": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0}}).optim.weight_decay == 0.0
    opt = build_optimizer(adamw.optim, [torch.nn.Parameter(torch.ones(2))])
    assert opt.param_groups[0]["weight_decay"] == 0.001


def test_fly_model_still_refuses_optimizer_settings():
    from sdmcl.errors import ConfigError

    parse_config({"model": {"name": "fly"}})
    with pytest.raises(ConfigError, match="optim"):
        parse_config({"model": {"name": "fly"}, "optim": {"name": "adamw"}})


# ---------------------------------------------------------------- pitfall warnings


def test_relu_removed_share():
    x = torch.tensor([[1.0, -1.0], [2.0, -4.0]])
    assert relu_removed_share([x]) == pytest.approx(5 / 8)
    assert relu_removed_share([x.abs()]) == 0.0
    assert relu_removed_share([torch.zeros(2, 2)]) == 0.0


def test_warning_for_an_unfinished_gaba_switch(tmp_path):
    logs = []
    cfg = digits_cfg(tmp_path, model=always_active())
    rd, summary = run(cfg, log=logs.append)
    assert len(summary["warnings"]) == 1 and "GABA switch has not completed" in summary["warnings"][0]
    assert sum("warning: the GABA switch" in line for line in logs) == 1
    assert "16.0 units active per test input of that task (k = 2)" in summary["warnings"][0]


def test_gaba_warning_threshold():
    from sdmcl.train.pitfalls import gaba_switch_unfinished

    cfg = SDMLPConfig(k=5)  # warn above max(3k, k + 5) = 15
    assert not gaba_switch_unfinished(cfg, 15.0) and gaba_switch_unfinished(cfg, 15.1)
    assert gaba_switch_unfinished(SDMLPConfig(k=1), 6.1) and not gaba_switch_unfinished(SDMLPConfig(k=1), 6.0)
    assert not gaba_switch_unfinished(SDMLPConfig(k=5, k_approach="mask"), 1000.0)
    assert not gaba_switch_unfinished(ReLUMLPConfig(), 1000.0)


def test_warning_for_signed_inputs_through_the_input_relu(tmp_path):
    # signed embeddings: standard normal features, half their L1 mass negative
    rng = np.random.default_rng(0)
    path = tmp_path / "emb.npz"
    y = np.repeat(np.arange(4), 30)
    np.savez(path, train_x=rng.standard_normal((120, 8)).astype(np.float32), train_y=y,
             test_x=rng.standard_normal((120, 8)).astype(np.float32), test_y=y)
    base = {"name": "e", "data": {"source": "embeddings", "path": str(path)}, "benchmark": {"num_tasks": 1},
            "model": {"name": "sdmlp", "neurons": 16, "k": 2, "gaba_switch_activations": 50},
            "train": {"epochs_per_task": 1}, "output": {"dir": str(tmp_path / "r"), "progress": False, "plots": False}}
    _, summary = run(parse_config(base), log=lambda s: None)
    assert any("input ReLU" in w and "removes 5" in w for w in summary["warnings"])
    signed = json.loads(json.dumps(base))
    signed["model"]["positive_weights"] = False
    _, summary = run(parse_config(signed), log=lambda s: None)
    assert not any("input ReLU" in w for w in summary["warnings"])

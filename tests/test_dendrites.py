"""Active Dendrites: segment gating, k-WTA, fixed sparsity, prototype contexts."""

import math

import pytest
import torch

from sdmcl.data.benchmarks import Task
from sdmcl.models.dendrites import ActiveDendrites, DendritesConfig, k_winners, select_segment


def test_gating_selects_the_right_segment():
    r = torch.tensor([[0.5, -2.0, 1.0], [0.1, 0.3, -0.2]])
    assert torch.equal(select_segment(r, "abs_max"), torch.tensor([-2.0, 0.3]))
    assert torch.equal(select_segment(r, "max"), torch.tensor([1.0, 0.3]))


def test_layer_gate_uses_the_context_segment():
    cfg = DendritesConfig(hidden_sizes=[2], num_segments=2, kw_percent_on=1.0, weight_sparsity=0.0)
    m = ActiveDendrites(cfg, input_dim=2, num_classes=2)
    layer = m.layers[0]
    with torch.no_grad():
        layer.linear.weight.copy_(torch.eye(2))
        layer.linear.bias.zero_()
        # unit 0: segment 0 responds +3 to context e0, segment 1 responds −5 to e1
        layer.segments.zero_()
        layer.segments[0, 0, 0] = 3.0
        layer.segments[0, 1, 1] = -5.0
    contexts = torch.eye(2)
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    out = layer(x, contexts, torch.tensor([0, 1]))
    assert torch.allclose(out[0, 0], torch.sigmoid(torch.tensor(3.0)))  # context 0 → segment 0
    assert torch.allclose(out[1, 0], torch.sigmoid(torch.tensor(-5.0)))  # context 1 → |−5| wins
    assert torch.allclose(out[:, 1], torch.full((2,), 0.5))  # no segment responds: σ(0)


def test_k_winners_keeps_exactly_k():
    y = torch.tensor([[0.1, 0.5, 0.3, 0.9], [4.0, 3.0, 2.0, 1.0]])
    assert torch.equal(k_winners(y, 2), torch.tensor([[0, 0.5, 0, 0.9], [4.0, 3.0, 0, 0]]))


def test_sparsity_holds_after_a_step_and_prototypes_pick_nearest():
    torch.manual_seed(0)
    m = ActiveDendrites(DendritesConfig(hidden_sizes=[32, 32], num_segments=2), input_dim=4, num_classes=3)
    density = [float(layer.weight_mask.mean()) for layer in m.layers]
    assert all(0.35 < d < 0.65 for d in density)
    a = torch.zeros(6, 4); a[:, 0] = 1.0
    b = torch.zeros(6, 4); b[:, 3] = 1.0
    m.on_task_start(Task(0, (0,), a, torch.zeros(6, dtype=torch.long), a, a[:, 0].long()))
    m.on_task_start(Task(1, (1,), b, torch.ones(6, dtype=torch.long), b, b[:, 0].long()))
    assert int(m.current_context) == 1
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(m(b), torch.ones(6, dtype=torch.long)).backward()
    m.before_step()
    opt.step()
    m.apply_constraints()
    for layer in m.layers:
        assert torch.all(layer.linear.weight[layer.weight_mask == 0] == 0)
    m.eval()
    assert m.context_ids(torch.tensor([[0.9, 0, 0, 0.1], [0, 0.2, 0, 1.0]])).tolist() == [0, 1]
    h = m.forward_with_hidden(a)[1]
    assert torch.all((h != 0).sum(1) <= 2)  # 5% of 32 units → k = 2


def test_dendrites_in_the_engine(tmp_path):
    from sdmcl.config import parse_config
    from sdmcl.train.engine import run

    cfg = parse_config({"data": {"source": "digits"}, "model": {"name": "dendrites", "hidden_sizes": [64, 64], "num_segments": 5},
                        "optim": {"name": "adam", "lr": 5e-4}, "train": {"epochs_per_task": 2, "batch_size": 256},
                        "output": {"dir": str(tmp_path), "plots": False, "progress": False}})
    _, summary = run(cfg, log=lambda s: None)
    assert 0.0 <= summary["final_average_accuracy"] <= 1.0 and summary["final_task_aware_accuracy"] > 0.5


def two_class_tasks():
    a = torch.zeros(6, 4); a[:, 0] = 1.0; a[3:, 1] = 0.5  # class 0
    b = torch.zeros(6, 4); b[:, 3] = 1.0  # class 1
    c = torch.zeros(6, 4); c[:, 2] = 2.0  # class 2
    x = torch.cat([a, b])
    y = torch.tensor([0] * 6 + [1] * 6)
    return Task(0, (0, 1), x, y, x, y), Task(1, (2,), c, torch.full((6,), 2), c, torch.full((6,), 2))


def test_true_class_protocol_feeds_the_label_prototype():
    cfg = DendritesConfig(hidden_sizes=[16, 16], num_segments=3, context="true_class", context_scale=255.0)
    m = ActiveDendrites(cfg, input_dim=4, num_classes=3)
    assert m.takes_labels
    t0, t1 = two_class_tasks()
    m.on_task_start(t0)
    assert torch.allclose(m.prototypes[0], torch.tensor([1.0, 0.25, 0, 0]))  # the class's mean training input
    assert torch.equal(m.prototypes[1], torch.tensor([0, 0, 0, 1.0]))
    assert torch.equal(m.prototypes[2], torch.zeros(4))  # not seen yet
    m.on_task_start(t1)
    assert torch.equal(m.prototypes[2], torch.tensor([0, 0, 2.0, 0]))
    m.eval()
    x = torch.rand(5, 4)
    labels = torch.tensor([0, 1, 2, 1, 0])
    # the same as feeding every sample its true class's prototype (× context_scale) directly
    h = x
    for layer in m.layers:
        h = layer(h, m.prototypes[labels] * 255.0, torch.arange(5))
    assert torch.allclose(m(x, labels=labels), m.head(h))
    # at test time the label changes the output: the run is label-informed
    assert not torch.allclose(m(x, labels=torch.zeros(5, dtype=torch.long)), m(x, labels=torch.ones(5, dtype=torch.long)))
    with pytest.raises(ValueError, match="labels"):
        m(x)


def test_sparsity_at_initialisation_only():
    torch.manual_seed(0)
    kept = {}
    for keep in (True, False):
        m = ActiveDendrites(DendritesConfig(hidden_sizes=[32], num_segments=2, keep_sparsity=keep, mask_seed=0),
                            input_dim=8, num_classes=3)
        layer = m.layers[0]
        assert torch.all(layer.linear.weight[layer.weight_mask == 0] == 0)  # absent at the start in both modes
        m.on_task_start(Task(0, (0, 1, 2), torch.rand(30, 8), torch.arange(30) % 3, torch.rand(3, 8), torch.arange(3)))
        m.train()
        opt = torch.optim.Adam(m.parameters(), lr=0.01)
        for _ in range(2):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(torch.rand(30, 8)), torch.arange(30) % 3).backward()
            m.before_step()
            opt.step()
            m.apply_constraints()
        kept[keep] = bool(torch.all(layer.linear.weight.detach()[layer.weight_mask == 0] == 0))
    assert kept == {True: True, False: False}  # the reference never re-zeroes: they train


def test_numenta_init():
    cfg = DendritesConfig(hidden_sizes=[40, 30], num_segments=4, weight_sparsity=0.5, kw_percent_on=0.1,
                          init="numenta", context_percent_on=0.1, mask_seed=3)
    m = ActiveDendrites(cfg, input_dim=20, num_classes=5).requires_grad_(False)
    first, second = m.layers
    assert torch.all((first.linear.weight != 0).sum(1) == 10)  # exactly round(0.5 · 20) inputs per unit
    assert torch.all((second.linear.weight != 0).sum(1) == 20)
    assert torch.all((m.head.weight != 0).sum(1) == 15)  # the head is sparse too
    # U(±1/sqrt(input density · weight density · fan_in)): input density 1, then kw_percent_on
    assert float(first.linear.weight.abs().max()) <= 1 / math.sqrt(1.0 * 0.5 * 20)
    assert float(first.linear.weight.abs().max()) > 0.8 / math.sqrt(0.5 * 20)
    assert float(second.linear.weight.abs().max()) <= 1 / math.sqrt(0.1 * 0.5 * 40)
    assert float(m.head.weight.abs().max()) <= 1 / math.sqrt(0.1 * 0.5 * 30)
    seg_bound = 1 / math.sqrt(0.1 * 1.0 * 20)
    assert seg_bound * 0.9 < float(first.segments.abs().max()) <= seg_bound


def test_label_informed_runs_are_marked_and_scored_with_labels(tmp_path, capsys):
    from sdmcl.config import parse_config
    from sdmcl.launch import print_run
    from sdmcl.report import comparison_table
    from sdmcl.train.checkpoint import load_checkpoint
    from sdmcl.train.engine import build_model, prepare, run

    cfg = parse_config({"data": {"source": "digits"}, "benchmark": {"num_tasks": 2},
                        "model": {"name": "dendrites", "hidden_sizes": [64, 64], "num_segments": 10, "context": "true_class",
                                  "keep_sparsity": False, "init": "numenta", "mask_seed": 0},
                        "optim": {"name": "adam", "lr": 5e-4, "grad_clip": None}, "train": {"epochs_per_task": 2, "batch_size": 256},
                        "output": {"dir": str(tmp_path), "plots": False, "progress": False}})
    rd, summary = run(cfg, log=lambda s: None)
    assert summary["label_informed"] is True and summary["task_incremental"] is False
    # the engine's accuracies are those of the saved model fed the true labels
    prepared = prepare(cfg)
    model = build_model(cfg, prepared.input_dim, prepared.num_classes)
    model.load_state_dict(load_checkpoint(rd.model_path)["model"])
    model.eval()
    with torch.no_grad():
        final = [float((model(t.test_x, labels=t.test_y).argmax(1) == t.test_y).float().mean()) for t in prepared.tasks]
    assert summary["final_task_accuracy"] == pytest.approx(final, abs=1e-6)
    print_run("dendrites-ref", rd, summary)
    assert "dendrites-ref [label-informed]: final average accuracy" in capsys.readouterr().out
    assert "run [label-informed]" in comparison_table([(cfg, summary)])


def test_true_class_context_refuses_regularizers():
    from sdmcl.config import parse_config
    from sdmcl.errors import ConfigError

    with pytest.raises(ConfigError, match="model.context: true_class"):
        parse_config({"model": {"name": "dendrites", "context": "true_class"}, "regularizer": {"name": "ewc"}})

"""Active Dendrites: segment gating, k-WTA, fixed sparsity, prototype contexts."""

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

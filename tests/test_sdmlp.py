"""SDMLP forward semantics and the constraints after an optimizer step."""

import torch
import torch.nn.functional as F

from sdmcl.models.mlp import ReLUMLPConfig, TopKMLPConfig, build_relu, build_topk
from sdmcl.models.sdmlp import SDMLP, SDMLPConfig


def make(**kw):
    torch.manual_seed(0)
    cfg = SDMLPConfig(neurons=20, k=3, **kw)
    return SDMLP(cfg, input_dim=6, num_classes=4)


def test_no_biases_and_constraints_at_start():
    m = make()
    assert m.addresses.bias is None and m.values.bias is None
    assert (m.addresses.weight >= 0).all() and (m.values.weight >= 0).all()
    assert_unit_rows(m.addresses.weight)


def assert_unit_rows(w):
    # a row whose weights were all clamped to 0 stays 0 (no NaN); every other row has norm 1
    norms = w.norm(dim=1)
    assert torch.allclose(norms[norms > 0], torch.ones(int((norms > 0).sum())), atol=1e-6)
    assert (norms > 0).sum() >= len(norms) - 2


def test_constraints_hold_after_a_step():
    m = make(k_approach="mask")
    opt = torch.optim.SGD(m.parameters(), lr=5.0)  # a big step pushes weights negative
    x = torch.randn(32, 6)
    y = torch.randint(0, 4, (32,))
    F.cross_entropy(m(x), y).backward()
    opt.step()
    assert (m.addresses.weight < 0).any() or (m.values.weight < 0).any()
    m.apply_constraints()
    assert (m.addresses.weight >= 0).all() and (m.values.weight >= 0).all()
    assert_unit_rows(m.addresses.weight)


def test_forward_matches_hand_computation():
    m = make(k_approach="mask")
    x = torch.tensor([[1.0, -2.0, 2.0, 0.0, 0.0, 0.0]])
    # relu → [1,0,2,0,0,0], L2 norm → /√5
    xn = torch.tensor([[1.0, 0, 2.0, 0, 0, 0]]) / 5 ** 0.5
    h = xn @ m.addresses.weight.T
    top = torch.topk(h, 3).indices[0]
    a = torch.zeros_like(h)
    a[0, top] = h[0, top]
    expected = a @ m.values.weight.T
    assert torch.allclose(m(x), expected, atol=1e-6)


def test_ablations_switch_components_off():
    m = make(l2_norm=False, positive_weights=False, bias=True, output_bias=True)
    assert m.addresses.bias is not None and m.values.bias is not None
    assert (m.addresses.weight < 0).any()  # signed weights stay signed
    assert not torch.allclose(m.addresses.weight.norm(dim=1), torch.ones(20))


def test_reset_head_keeps_counters_and_addresses():
    m = make()
    m.train()
    m(torch.rand(8, 6))
    counters = m.topk.gaba_counters.clone()
    addresses = m.addresses.weight.clone()
    m.reset_head(7)
    assert m.values.weight.shape == (7, 20)
    assert torch.equal(m.topk.gaba_counters, counters) and counters.sum() > 0
    assert torch.equal(m.addresses.weight, addresses)


def test_relu_and_topk_mlps():
    torch.manual_seed(0)
    relu = build_relu(ReLUMLPConfig(neurons=16, dropout=0.5), 6, 3)
    assert relu.fc1.bias is not None
    relu.eval()
    x = torch.randn(4, 6)
    assert torch.allclose(relu(x), relu.fc2(torch.relu(relu.fc1(x))))
    topk = build_topk(TopKMLPConfig(neurons=16, k=2, k_transition_epochs=0), 6, 3)
    topk.on_epoch_start(0)
    h = topk.hidden(x)
    assert ((h > 0).sum(1) <= 2).all()

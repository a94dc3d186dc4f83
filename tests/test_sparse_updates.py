"""The SDMLP's sparse address gradient and row-sparse SGD steps give the dense results,
touch only the active rows, and are enabled by the engine only where that is exact."""

import pytest
import torch
import torch.nn.functional as F

from sdmcl.config import parse_config
from sdmcl.models.sdmlp import SDMLP, SDMLPConfig
from sdmcl.models.topk import active_counts
from sdmcl.train.engine import Engine, prepare
from sdmcl.train.optim import clip_coefficient, plain_sgd_step_, scale_gradients_
from sdmcl.train.rundir import RunDir

N, K, D, C = 40, 3, 12, 4


def switched_pair():
    """Two identical SDMLPs whose GABA switch is complete (exact Top-K): sparse and dense backward."""
    models = []
    for sparse in (True, False):
        torch.manual_seed(0)
        m = SDMLP(SDMLPConfig(neurons=N, k=K, gaba_switch_activations=1, sparse_backward=sparse), D, C)
        m.topk.gaba_counters.fill_(10)
        models.append(m)
    return models


def batch(seed=1, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, D, generator=g), torch.randint(0, C, (n,), generator=g)


def test_active_counts_counts_positive_entries():
    a = torch.tensor([[0.0, 2.0, 0.5], [0.0, 0.0, 1e-30], [3.0, 0.0, 0.0]])
    assert active_counts(a).tolist() == [1, 1, 2]
    assert active_counts(a).dtype == torch.int64


@pytest.mark.parametrize("row_sparse", [False, True])
def test_sparse_backward_equals_dense_gradient(row_sparse):
    sparse, dense = switched_pair()
    sparse.set_row_sparse_updates(row_sparse)
    x, y = batch()
    F.cross_entropy(sparse(x), y).backward()
    F.cross_entropy(dense(x), y).backward()
    g, g_ref = sparse.addresses.weight.grad, dense.addresses.weight.grad
    assert g.is_sparse == row_sparse
    g = g.to_dense()
    assert torch.allclose(g, g_ref, atol=1e-7)
    # only neurons active in the batch get a gradient, and there are few of them (≤ 8 × k)
    active_rows = (g_ref != 0).any(1)
    assert 0 < int(active_rows.sum()) <= 8 * K
    if row_sparse:
        stored = sparse.addresses.weight.grad.coalesce().indices()[0]
        assert set(stored.tolist()) >= set(active_rows.nonzero().squeeze(1).tolist())
        assert len(stored) < N


def twin_models(approach, counters, epoch=0):
    """Two identical SDMLPs in training mode: the hand-written backward and plain autograd."""
    models = []
    for fused in (True, False):
        torch.manual_seed(0)
        m = SDMLP(SDMLPConfig(neurons=N, k=K, k_approach=approach, gaba_switch_activations=100,
                              k_transition_epochs=4, sparse_backward=fused), D, C)
        if approach == "gaba_switch":
            m.topk.gaba_counters.copy_(counters)
        m.on_epoch_start(epoch)
        models.append(m)
    return models


GABA_STATES = {  # counters for T = 100: g = -1 + 2c/100
    "excite": torch.zeros(N, dtype=torch.int64),  # g = -1: every neuron active, also where h <= 0
    "mixed": torch.arange(N, dtype=torch.int64) * 5,  # g from -1 to +1 across neurons
    "switched": torch.full((N,), 100, dtype=torch.int64),  # g = +1: exact Top-K
}


@pytest.mark.parametrize("approach,state,epoch", [
    ("gaba_switch", "excite", 0), ("gaba_switch", "mixed", 0), ("gaba_switch", "switched", 0),
    ("mask", None, 0), ("subtract", None, 0),
    ("linear_decay_mask", None, 0), ("linear_decay_mask", None, 3),  # k = n (all kept), then k < n
    ("linear_decay_subtract", None, 0), ("linear_decay_subtract", None, 3),
])
@pytest.mark.parametrize("row_sparse", [False, True])
def test_hand_written_backward_equals_autograd(approach, state, epoch, row_sparse):
    """∂L/∂W₁, ∂L/∂W₂ and ∂L/∂x of the one-node SDMLP backward equal autograd through the
    individual operations, in every k approach and every phase of the GABA switch."""
    fused, reference = twin_models(approach, GABA_STATES.get(state), epoch)
    fused.set_row_sparse_updates(row_sparse)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, D, generator=g)  # signed inputs: some rows of h are negative
    y = torch.randint(0, C, (16,), generator=g)
    grads = []
    for m in (fused, reference):
        xi = x.clone().requires_grad_(True)
        F.cross_entropy(m(xi), y).backward()
        grads.append((m.addresses.weight.grad.to_dense(), m.values.weight.grad, xi.grad))
    for got, want in zip(*grads):
        assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
    assert grads[1][0].abs().sum() > 0 and grads[1][2].abs().sum() > 0
    assert torch.equal(fused.activity_window, reference.activity_window)
    if state == "excite":  # all neurons active: GABA inhibition is negative everywhere
        assert (fused.activity_window == 16).all()


def test_row_sparse_step_changes_only_active_rows_and_keeps_constraints():
    sparse, dense = switched_pair()
    sparse.set_row_sparse_updates(True)
    opt_s = torch.optim.SGD(sparse.parameters(), lr=0.5)
    opt_d = torch.optim.SGD(dense.parameters(), lr=0.5)
    for step in range(5):
        x, y = batch(seed=step)
        before = sparse.addresses.weight.detach().clone()
        for m, opt in ((sparse, opt_s), (dense, opt_d)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            if m is sparse:
                active = m._last_batch["active"] > 0  # neurons active for some sample of the batch
            m.before_step()
            opt.step()
            m.apply_constraints()
        w = sparse.addresses.weight.detach()
        changed = (w != before).any(1)
        assert changed.any()
        assert not (changed & ~active).any()  # no row outside the batch's active neurons moved
        assert (w >= 0).all() and (sparse.values.weight >= 0).all()
        norms = w.norm(dim=1)
        assert torch.allclose(norms[norms > 0], torch.ones(int((norms > 0).sum())), atol=1e-6)
    # the dense model renormalises every row each step; the results agree to float rounding
    assert torch.allclose(sparse.addresses.weight, dense.addresses.weight, atol=1e-6)
    assert torch.allclose(sparse.values.weight, dense.values.weight, atol=1e-6)


def test_clip_coefficient_matches_torch():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    for a, b in zip(ps, ref):
        a.grad = torch.randn_like(a) * 3
        b.grad = a.grad.clone()
    scale_gradients_(ps, clip_coefficient(ps, 1.0).clamp(max=1.0))
    torch.nn.utils.clip_grad_norm_(ref, 1.0)
    for a, b in zip(ps, ref):
        assert torch.equal(a.grad, b.grad)
    assert abs(float(torch.cat([p.grad.flatten() for p in ps]).norm()) - 1.0) < 1e-5


def test_clip_handles_row_sparse_gradients():
    w = torch.nn.Parameter(torch.zeros(6, 2))
    rows = torch.tensor([1, 4])
    vals = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    w.grad = torch.sparse_coo_tensor(rows[None], vals, (6, 2), check_invariants=True)
    v = torch.nn.Parameter(torch.zeros(2))
    v.grad = torch.tensor([0.0, 0.0])
    coef = clip_coefficient([w, v], 1.0)  # ‖g‖ = 5
    assert abs(float(coef) - 0.2) < 1e-6
    scale_gradients_([w, v], coef)
    expected = torch.zeros(6, 2)
    expected[1, 0], expected[4, 1] = 0.6, 0.8
    assert torch.allclose(w.grad.to_dense(), expected, atol=1e-6)


def engine_for(tmp_path, **sections):
    raw = {"name": "t", "data": {"source": "digits"},
           "model": {"name": "sdmlp", "neurons": 32, "k": 4, "gaba_switch_activations": 500},
           "train": {"epochs_per_task": 1, "threads": 1}, "benchmark": {"num_tasks": 2},
           "output": {"dir": str(tmp_path), "progress": False, "plots": False}}
    for key, value in sections.items():
        raw[key] = value
    cfg = parse_config(raw)
    rd = RunDir(tmp_path / "run")
    rd.create(cfg)
    return Engine(prepare(cfg), rd, progress=False, log=lambda s: None)


@pytest.mark.parametrize("optim,regularizer,expected", [
    ({"name": "sgd", "lr": 0.1}, {"name": "none"}, True),
    ({"name": "sgd", "lr": 0.1, "weight_decay": 0.01}, {"name": "none"}, False),
    ({"name": "sgdm", "lr": 0.1}, {"name": "none"}, False),
    ({"name": "adam", "lr": 0.001}, {"name": "none"}, False),
    # a closed-form penalty gradient is added to the row-sparse one (all rows then constrained);
    # SI reads the gradients in its per-step hooks, so it gets dense ones
    ({"name": "sgd", "lr": 0.1}, {"name": "ewc"}, True),
    ({"name": "sgd", "lr": 0.1}, {"name": "si"}, False),
])
def test_engine_enables_row_sparse_steps_only_where_exact(tmp_path, optim, regularizer, expected):
    engine = engine_for(tmp_path, optim=optim, regularizer=regularizer)
    assert engine.model.row_sparse_updates is expected
    engine.train_epoch(engine.tasks[0], 0)  # and a whole epoch runs in that mode
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())


@pytest.mark.parametrize("max_norm", [1e-3, 1e6])  # always clipped / never clipped
def test_clipped_step_equals_clip_then_step(tmp_path, max_norm):
    """The engine's clipped step (no-op multiply skipped) makes the step of torch's
    clip_grad_norm_ followed by the optimizer's step."""
    engine = engine_for(tmp_path, optim={"name": "adam", "lr": 0.01, "grad_clip": max_norm})
    model = engine.model
    params = engine.params
    start = [p.detach().clone() for p in params]
    x, y = engine.tasks[0].train_x[:32], engine.tasks[0].train_y[:32]
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in params]
    engine.clipped_step(max_norm)
    got = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s, g in zip(params, start, grads):
            p.copy_(s)
            p.grad = g
    ref_opt = type(engine.optimizer)(params, **{k: v for k, v in engine.optimizer.defaults.items()})
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    ref_opt.step()
    for a, p in zip(got, params):
        assert torch.equal(a, p.detach())  # identical operations
    assert any(not torch.equal(a, s) for a, s in zip(got, start))


@pytest.mark.parametrize("max_norm", [None, 1e6, 0.5])  # no clipping / never clipped / clipped
def test_plain_sgd_step_equals_clip_then_torch_sgd(max_norm):
    """plain_sgd_step_ = clip_grad_norm_ + torch.optim.SGD(lr) step, for dense and row-sparse
    (COO) gradients; the gradients are dropped after the step."""
    torch.manual_seed(0)
    w, v = torch.nn.Parameter(torch.randn(6, 3)), torch.nn.Parameter(torch.randn(4))
    rows = torch.tensor([1, 4])
    w_rows = torch.tensor([[3.0, 0.0, 1.0], [0.0, 4.0, -2.0]])
    w.grad = torch.sparse_coo_tensor(rows[None], w_rows, (6, 3), is_coalesced=True, check_invariants=True)
    v.grad = torch.tensor([0.5, -1.0, 0.0, 2.0])
    ref = [torch.nn.Parameter(w.detach().clone()), torch.nn.Parameter(v.detach().clone())]
    ref[0].grad, ref[1].grad = w.grad.to_dense(), v.grad.clone()
    untouched = w.detach()[[0, 2, 3, 5]].clone()
    c = plain_sgd_step_([w, v], 0.1, max_norm)
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(ref, max_norm)
    torch.optim.SGD(ref, lr=0.1).step()
    norm = (w_rows.pow(2).sum() + 0.25 + 1 + 4) ** 0.5  # = √(9+1+16+4+5.25) = √35.25
    assert c == (1.0 if max_norm in (None, 1e6) else pytest.approx(0.5 / (float(norm) + 1e-6)))
    for got, want in zip((w, v), ref):
        if c == 1.0:
            assert torch.equal(got.detach(), want.detach())  # the same arithmetic
        else:
            assert torch.allclose(got.detach(), want.detach(), atol=1e-7)
    assert torch.equal(w.detach()[[0, 2, 3, 5]], untouched)  # rows without gradient do not move
    assert w.grad is None and v.grad is None

"""The closed-form gradient of quadratic penalties equals autograd's gradient of the penalty."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdmcl.config import parse_config
from sdmcl.data.benchmarks import Task
from sdmcl.regularizers.base import QuadraticPenalty, Regularizer, trainable
from sdmcl.regularizers.ewc import EWC, EWCConfig
from sdmcl.regularizers.l2 import L2, L2Config
from sdmcl.regularizers.mas import MAS, MASConfig
from sdmcl.regularizers.si import SI, SIConfig
from sdmcl.train.engine import Engine, prepare
from sdmcl.train.rundir import RunDir


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def tiny_task(index, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 5, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    return Task(index, (0, 1, 2), x, y, x, y)


def perturb(model, scale, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def regularizer_after_tasks(name, model, tasks):
    cfgs = {"ewc": EWCConfig(lam=7.0, beta=1.0, fisher_batches=2, fisher_batch_size=16),
            "ewc-online": EWCConfig(lam=7.0, beta=1.0, mode="online", gamma=0.7, fisher_batches=2, fisher_batch_size=16),
            "mas": MASConfig(lam=3.0, batches=2, batch_size=16), "si": SIConfig(lam=5.0, beta=1.0), "l2": L2Config(lam=2.0)}
    reg = {"ewc": EWC, "ewc-online": EWC, "mas": MAS, "si": SI, "l2": L2}[name](cfgs[name], model)
    for t in range(tasks):
        if isinstance(reg, SI):  # as if steps had moved the weights along some path
            for w in reg.w:
                w.add_(torch.rand(w.shape))
        reg.on_task_end(model, tiny_task(t, t))
        perturb(model, 0.3, 100 + t)
    return reg


@pytest.mark.parametrize("name", ["ewc", "ewc-online", "mas", "si", "l2"])
@pytest.mark.parametrize("tasks", [1, 3])
def test_closed_form_gradient_and_value_equal_autograd(name, tasks):
    model = tiny_model()
    reg = regularizer_after_tasks(name, model, tasks)
    assert reg.closed_form()
    params = [p for _, p in trainable(model)]
    # autograd: the penalty built term by term, as the engine did
    value = reg.penalty(model)
    want = torch.autograd.grad(value, params)
    value = value.detach()
    # by hand for one term: 2λ Σ_t Ω_t (θ − θ_t) on the first parameter
    lam = reg.cfg.lam
    by_hand = sum(2 * lam * (imp[0] * (params[0].detach() - anc[0])) for imp, anc in reg.quadratic_terms())
    assert torch.allclose(want[0], by_hand, rtol=1e-5, atol=1e-6)
    # closed form, added to existing gradients
    base = [torch.randn_like(p) for p in params]
    for p, b in zip(params, base):
        p.grad = b.clone()
    q = QuadraticPenalty()
    assert q.update(lam, reg.quadratic_terms())
    got_value = q.add_gradients(params)
    for p, b, w in zip(params, base, want):
        assert torch.allclose(p.grad, b + w, rtol=1e-5, atol=1e-6)
    assert float(got_value) == pytest.approx(float(value), rel=1e-5, abs=1e-6)
    assert float(value) > 0


def test_closed_form_adds_to_row_sparse_gradient_and_rebuilds_when_terms_change():
    model = tiny_model()
    reg = regularizer_after_tasks("ewc", model, 1)
    params = [p for _, p in trainable(model)]
    w = params[0]
    rows = torch.tensor([0, 2])
    vals = torch.randn(2, w.shape[1])
    w.grad = torch.sparse_coo_tensor(rows[None], vals, w.shape, is_coalesced=True, check_invariants=True)
    q = QuadraticPenalty()
    q.update(reg.cfg.lam, reg.quadratic_terms())
    q.add_gradients(params, with_value=False)
    dense = torch.zeros_like(w)
    dense[rows] = vals
    want = torch.autograd.grad(reg.penalty(model), params)
    assert not w.grad.is_sparse
    assert torch.allclose(w.grad, dense + want[0], rtol=1e-5, atol=1e-6)
    # a second task ends: the key (tensor identities and versions) changes, A and b are rebuilt
    reg.on_task_end(model, tiny_task(5, 5))
    perturb(model, 0.1, 7)
    for p in params:
        p.grad = None
    assert q.update(reg.cfg.lam, reg.quadratic_terms())
    q.add_gradients(params, with_value=False)
    want = torch.autograd.grad(reg.penalty(model), params)
    assert all(torch.allclose(p.grad, g, rtol=1e-5, atol=1e-6) for p, g in zip(params, want))
    # an importance changed in place (SI's Ω += ...) is noticed too
    with torch.no_grad():
        reg.fishers[0][0].mul_(3.0)
    for p in params:
        p.grad = None
    q.update(reg.cfg.lam, reg.quadratic_terms())
    q.add_gradients(params, with_value=False)
    want = torch.autograd.grad(reg.penalty(model), params)
    assert all(torch.allclose(p.grad, g, rtol=1e-5, atol=1e-6) for p, g in zip(params, want))


def test_no_terms_no_penalty_and_overridden_penalty_stays_in_autograd():
    model = tiny_model()
    reg = EWC(EWCConfig(), model)
    q = QuadraticPenalty()
    assert not q.update(reg.cfg.lam, reg.quadratic_terms())
    assert reg.penalty(model) == 0.0

    class Custom(Regularizer):
        def penalty(self, model):
            return sum(p.abs().sum() for p in model.parameters())

    assert not Custom(EWCConfig(), model).closed_form()


def engine_for(tmp_path, name, regularizer, optim):
    cfg = parse_config({"name": name, "data": {"source": "digits"}, "seed": 3,
                        "model": {"name": "sdmlp", "neurons": 48, "k": 4, "gaba_switch_activations": 400},
                        "regularizer": regularizer, "optim": optim,
                        "train": {"epochs_per_task": 2, "threads": 1}, "benchmark": {"num_tasks": 3},
                        "output": {"dir": str(tmp_path), "progress": False, "plots": False}})
    rd = RunDir(tmp_path / name)
    rd.create(cfg)
    return Engine(prepare(cfg), rd, progress=False, log=lambda s: None)


@pytest.mark.parametrize("regularizer", [{"name": "ewc", "lam": 300.0, "beta": 1.0}, {"name": "mas", "lam": 50.0},
                                         {"name": "l2", "lam": 1.0}, {"name": "si", "lam": 1.0, "beta": 1.0}])
@pytest.mark.parametrize("optim", [{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": 0.01}])
def test_engine_closed_form_run_equals_autograd_penalty_run(tmp_path, regularizer, optim):
    """Three tasks of an SDMLP with a regularizer: the engine with the closed-form gradient
    (lean SGD step, row-sparse gradients) ends where the engine with the penalty in autograd
    (dense gradients) ends, up to float summation order; the reported losses agree too."""
    fast = engine_for(tmp_path, "fast", regularizer, optim)
    slow = engine_for(tmp_path, "slow", regularizer, optim)
    assert fast.quadratic is not None
    slow.quadratic = None  # the penalty in the loss, through autograd, as before
    slow.row_sparse = False
    slow.model.set_row_sparse_updates(False)
    expect_sparse = optim["name"] == "sgd" and regularizer["name"] != "si"
    assert fast.row_sparse is expect_sparse
    losses = {"fast": [], "slow": []}
    for task in fast.tasks:
        for e in range(2):
            for key, eng in (("fast", fast), ("slow", slow)):
                t = eng.tasks[task.index]
                losses[key].append(eng.train_epoch(t, e))
        for eng in (fast, slow):
            eng.regularizer.on_task_end(eng.model, eng.tasks[task.index])
    assert fast._all_rows_move is expect_sparse  # the penalty moved every row in tasks 2-3
    def gap(a, b):  # largest difference relative to the tensor's scale, over weights and buffers
        return max(float((x.double() - y.double()).abs().max() / (1 + y.double().abs().max()))
                   for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))

    assert gap(fast, slow) < 2e-5
    assert losses["fast"] == pytest.approx(losses["slow"], rel=1e-4)
    # the penalty mattered: without it the weights end much further away
    plain = engine_for(tmp_path, "plain", {"name": "none"}, optim)
    for task in plain.tasks:
        for e in range(2):
            plain.train_epoch(task, e)
    assert gap(fast, plain) > 20 * gap(fast, slow) + 1e-5

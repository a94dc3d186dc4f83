"""Regularizers on tiny problems with hand-checkable results."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdmcl.data.benchmarks import Task
from sdmcl.errors import ConfigError
from sdmcl.regularizers.ewc import EWC, EWCConfig, fisher_diagonal
from sdmcl.regularizers.l2 import L2, L2Config
from sdmcl.regularizers.mas import MAS, MASConfig
from sdmcl.regularizers.si import SI, SIConfig


def linear(w):
    m = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(w))
    return m


def task_of(x, y, index=0):
    x, y = torch.tensor(x), torch.tensor(y)
    return Task(index, (0, 1), x, y, x, y)


def test_ewc_penalty_zero_at_anchor_and_lambda_f_dtheta2():
    m = linear([[1.0, 0.0], [0.0, 1.0]])
    reg = EWC(EWCConfig(lam=3.0), m)
    assert reg.penalty(m) == 0.0
    reg.fishers = [[torch.tensor([[2.0, 0.0], [0.0, 0.5]])]]
    reg.anchors = [[m.weight.detach().clone()]]
    assert float(reg.penalty(m).detach()) == 0.0
    with torch.no_grad():
        m.weight += torch.tensor([[0.1, 5.0], [0.0, -2.0]])
    # 3 · (2·0.1² + 0·5² + 0 + 0.5·2²) = 3 · (0.02 + 2) = 6.06
    assert float(reg.penalty(m).detach()) == pytest.approx(6.06)


def test_fisher_estimators_as_defined():
    m = linear([[2.0, 0.0], [0.0, 1.0]])
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([1])
    # logits = [2, 0]; argmax = 0; β = 1: p = softmax([2,0]) = [0.8808, 0.1192]
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    # ∂CE/∂W[c, :] = (p_c − 1[c=t]) x → only column 0 non-zero; F = grad²
    ref = fisher_diagonal(m, [(x, y)], 1.0, "reference", 0)[0]
    emp = fisher_diagonal(m, [(x, y)], 1.0, "empirical", 0)[0]
    assert torch.allclose(ref[:, 0], torch.stack([(p[0] - 1) ** 2, p[1] ** 2]), atol=1e-6)
    assert torch.allclose(emp[:, 0], torch.stack([p[0] ** 2, (p[1] - 1) ** 2]), atol=1e-6)
    assert torch.all(ref[:, 1] == 0) and not torch.allclose(ref, emp)
    # expected: labels sampled from the model; with a sharp model it is the argmax almost surely
    sharp = linear([[50.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(fisher_diagonal(sharp, [(x, y)], 1.0, "expected", 0)[0],
                          fisher_diagonal(sharp, [(x, y)], 1.0, "reference", 0)[0])


def test_ewc_memory_keeps_one_fisher_per_task_online_decays():
    m = linear([[1.0, 0.5], [0.2, 1.0]])
    t0, t1 = task_of([[1.0, 0.0]], [0], 0), task_of([[0.0, 1.0]], [1], 1)
    mem = EWC(EWCConfig(beta=1.0), m)
    mem.on_task_end(m, t0)
    mem.on_task_end(m, t1)
    assert len(mem.fishers) == 2
    onl = EWC(EWCConfig(beta=1.0, mode="online", gamma=0.5), m)
    onl.on_task_end(m, t0)
    onl.on_task_end(m, t1)
    assert len(onl.fishers) == 1
    assert torch.allclose(onl.fishers[0][0], 0.5 * mem.fishers[0][0] + mem.fishers[1][0])


def test_mas_importance_is_mean_abs_output_norm_gradient():
    m = linear([[1.0, 2.0], [3.0, -1.0]])
    x = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    reg = MAS(MASConfig(batches=1, batch_size=2), m)
    reg.on_task_end(m, task_of(x.tolist(), [0, 1]))
    # mean over the 4 logits of z²: ∂/∂W[c,k] = (2/4) Σ_i z_ic x_ik
    z = x @ m.weight.detach().T  # [[3, 2], [2, 6]]
    expected = (0.5 * z.T @ x).abs()  # [[0.5·(3+4), 0.5·3], [0.5·(2+12), 0.5·2]]
    assert torch.allclose(reg.importance[0], expected)
    assert torch.allclose(expected, torch.tensor([[3.5, 1.5], [7.0, 1.0]]))
    assert float(reg.penalty(m).detach()) == 0.0


def test_si_two_step_toy():
    m = linear([[0.0, 0.0], [0.0, 0.0]])
    reg = SI(SIConfig(lam=1.0, beta=1.0, damping=0.1), m)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    total_w = torch.zeros(2, 2)
    for _ in range(2):
        logits = m(x)
        g = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), m.weight, retain_graph=True)[0]
        opt.zero_grad()
        F.cross_entropy(logits, y).backward(retain_graph=True)
        reg.before_step(m, logits, y)
        before = m.weight.detach().clone()
        opt.step()
        reg.after_step(m)
        total_w -= g * (m.weight.detach() - before)  # by hand: −g·Δθ, Δθ = −lr·g → +g²
    assert torch.allclose(reg.w[0], total_w) and (reg.w[0] >= 0).all()
    # step 1: g = [[-.5, 0], [.5, 0]] → w = .25 each; step 2 adds g2² with p = softmax([.5,-.5])
    assert float(reg.w[0][0, 0]) > 0.25
    reg.on_task_end(m, task_of([[1.0, 0.0]], [0]))
    dtheta = m.weight.detach()
    assert torch.allclose(reg.importance[0], total_w / (dtheta**2 + 0.1))
    assert torch.all(reg.w[0] == 0)
    assert float(reg.penalty(m).detach()) == 0.0


def test_l2_penalty():
    m = linear([[1.0, 1.0], [1.0, 1.0]])
    reg = L2(L2Config(lam=10.0), m)
    reg.on_task_end(m, task_of([[1.0, 0.0]], [0]))
    with torch.no_grad():
        m.weight[0, 0] += 0.5
    assert float(reg.penalty(m).detach()) == pytest.approx(10 * 0.25)


@pytest.mark.parametrize("reg_cls, cfg", [(EWC, EWCConfig(beta=1.0)), (MAS, MASConfig()), (SI, SIConfig()), (L2, L2Config())])
def test_state_dict_round_trip(reg_cls, cfg):
    m = linear([[1.0, 0.5], [0.2, 1.0]])
    reg = reg_cls(cfg, m)
    if isinstance(reg, SI):
        reg.w[0] += 1.0  # as if steps had been taken
    reg.on_task_end(m, task_of([[1.0, 0.0], [0.0, 1.0]], [0, 1]))
    with torch.no_grad():
        m.weight += 0.3
    other = reg_cls(cfg, linear([[0.0, 0.0], [0.0, 0.0]]))
    other.load_state_dict(reg.state_dict())
    assert float(other.penalty(m).detach()) == float(reg.penalty(m).detach()) > 0


@pytest.mark.parametrize("cfg", [EWCConfig(lam=-1), MASConfig(lam=-1), SIConfig(lam=-1), L2Config(lam=-1)])
def test_negative_lambda_rejected(cfg):
    with pytest.raises(ConfigError, match="regularizer.lam"):
        cfg.check()


# ---------------------------------------------------------------- the reference's normalisations


def ce_grad_by_hand(W, x, target, beta):
    """∇_W Σ_i CE(β·W x_i, t_i) = β Σ_i (softmax(β W x_i) − e_{t_i}) x_iᵀ (written out, no autograd)."""
    z = beta * (x @ W.T)
    p = torch.softmax(z, 1)
    p[torch.arange(len(x)), target] -= 1
    return beta * p.T @ x


def partition(task, batches, size, name):
    """The batches the regularizer draws (a seeded permutation of the task, cut in order)."""
    from sdmcl.regularizers.base import task_batches

    return task_batches(task, batches, size, (name, task.index))


def test_ewc_reference_normalisation_divides_by_five_of_six_batches():
    W = torch.tensor([[0.5, -1.0], [2.0, 0.3]])
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0], [0.5, 0.5], [-1.0, 2.0]])
    task = task_of(x.tolist(), [0, 1, 0, 1, 0, 1])
    beta = 0.5
    # the reference: Σ over its batches of (batch-sum gradient)², divided by (batches − 1)·batch size;
    # here 3 batches of 2 → divided by 2·2 = 4 (the mean divides by the 6 samples used)
    total = torch.zeros(2, 2)
    for xb, _ in partition(task, 3, 2, "ewc"):
        total += ce_grad_by_hand(W, xb, (xb @ W.T).argmax(1), beta) ** 2
    model = linear(W.tolist())
    ref = EWC(EWCConfig(beta=beta, fisher_batches=3, fisher_batch_size=2, normalization="reference"), model)
    ref.on_task_end(model, task)
    assert torch.allclose(ref.fishers[0][0], total / 4, atol=1e-6)
    mean = EWC(EWCConfig(beta=beta, fisher_batches=3, fisher_batch_size=2), model)
    mean.on_task_end(model, task)
    assert torch.allclose(mean.fishers[0][0], total / 6, atol=1e-6)


def test_ewc_reference_normalisation_ignores_a_small_task():
    # 5 samples, 6 batches of 2 asked: 3 batches used (2, 2, 1); the reference still divides
    # by 5·2 = 10 (on Split CIFAR-100's 1,000-image tasks: by 2,560 for 1,000 samples)
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[1.0, 0.2], [0.1, 1.0], [1.0, 1.5], [2.0, 0.0], [0.0, 0.5]])
    task = task_of(x.tolist(), [0, 1, 0, 1, 0])
    total = torch.zeros(2, 2)
    for xb, _ in partition(task, 6, 2, "ewc"):
        total += ce_grad_by_hand(W, xb, (xb @ W.T).argmax(1), 1.0) ** 2
    for normalization, divisor in (("reference", 10), ("mean", 5)):
        reg = EWC(EWCConfig(beta=1.0, fisher_batch_size=2, normalization=normalization), linear(W.tolist()))
        reg.on_task_end(linear(W.tolist()), task)
        assert torch.allclose(reg.fishers[0][0], total / divisor, atol=1e-6)


def test_ewc_reference_normalisation_needs_two_batches():
    with pytest.raises(ConfigError, match="regularizer.fisher_batches"):
        EWCConfig(fisher_batches=1, normalization="reference").check()


def test_mas_reference_normalisation_divides_by_the_tasks_batches():
    W = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    x = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 1.0], [1.0, -1.0], [0.5, 2.0]])
    task = task_of(x.tolist(), [0, 1, 0, 1, 0])
    # ∂ mean_{B×C}(z²)/∂W = (2/(B·C)) Σ_i z_i x_iᵀ; |·| summed over the 2 batches used, divided by
    # the number of batches of 2 in the 5-sample task, ⌈5/2⌉ = 3 (the mean divides by the 2 used)
    total = torch.zeros(2, 2)
    for xb, _ in partition(task, 2, 2, "mas"):
        z = xb @ W.T
        total += (2 / z.numel() * z.T @ xb).abs()
    for normalization, divisor in (("reference", 3), ("mean", 2)):
        reg = MAS(MASConfig(batches=2, batch_size=2, normalization=normalization), linear(W.tolist()))
        reg.on_task_end(linear(W.tolist()), task)
        assert torch.allclose(reg.importance[0], total / divisor, atol=1e-6)


@pytest.mark.parametrize("leak", [False, True])
def test_si_reference_gradient_leak_adds_the_beta_ce_gradient_to_the_step(leak):
    W = [[0.5, -0.2], [0.1, 0.4]]
    m = linear(W)
    beta = 0.5
    reg = SI(SIConfig(beta=beta, reference_gradient_leak=leak), m)
    x, y = torch.tensor([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0]]), torch.tensor([0, 1, 1])
    logits = m(x)
    F.cross_entropy(logits, y).backward(retain_graph=True)
    reg.before_step(m, logits, y)
    Wt = torch.tensor(W)
    clean = ce_grad_by_hand(Wt, x, y, 1.0) / 3  # ∇ of the mean CE
    si_term = ce_grad_by_hand(Wt, x, y, beta)  # ∇ Σ CE(β·logits)
    expected = clean + si_term if leak else clean
    assert torch.allclose(m.weight.grad, expected, atol=1e-6)
    # the path integral uses the β-CE gradient alone either way
    assert torch.allclose(reg._grads[0], si_term, atol=1e-6)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    opt.step()
    reg.after_step(m)
    assert torch.allclose(reg.w[0], -si_term * (-0.1 * expected), atol=1e-6)

"""The approximate Top-K (model.topk_search: lowrank): exact where the candidates cover the
layer, gradients of the candidate rows equal autograd's, the index follows the addresses,
it falls back to the exact path where it should, and runs with it resume bit for bit."""

import json

import pytest
import torch
import torch.nn.functional as F

from sdmcl.config import parse_config
from sdmcl.errors import ConfigError
from sdmcl.models.sdmlp import SDMLP, SDMLPConfig
from sdmcl.train.engine import Engine, prepare
from sdmcl.train.rundir import RunDir

N, K, D, C = 64, 3, 12, 4


def model_pair(candidates=N, counters=None, margin=None, rank=4, **search):
    """An exact SDMLP and its approximate twin (same weights, counters, principal directions)."""
    out = []
    for mode in ("exact", "lowrank"):
        torch.manual_seed(0)
        cfg = SDMLPConfig(neurons=N, k=K, gaba_switch_activations=100, topk_search=mode, search_rank=rank,
                          search_margin=margin, search_candidates=candidates, search_min_neurons=0, search_max_union=1.0,
                          **search)
        m = SDMLP(cfg, D, C)
        if counters is not None:
            m.topk.gaba_counters.copy_(counters)
        out.append(m)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        out[1].search.observe(torch.rand(200, D, generator=g))
    return out


def data(seed=1, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, D, generator=g), torch.randint(0, C, (n,), generator=g)


@pytest.mark.parametrize("state", ["mixed", "switched"])
@pytest.mark.parametrize("row_sparse", [False, True])
def test_candidates_covering_the_layer_give_the_exact_layer(state, row_sparse):
    """With every neuron a candidate the approximate path is the exact layer: same logits,
    gradients, counters (up to float summation order)."""
    counters = torch.arange(N, dtype=torch.int64) * 3 if state == "mixed" else torch.full((N,), 100)
    exact, approx = model_pair(counters=counters)
    for m in (exact, approx):
        m.set_row_sparse_updates(row_sparse)
    x, y = data()
    out = []
    for m in (exact, approx):
        logits = m(x)
        F.cross_entropy(logits, y).backward()
        out.append((logits.detach(), m.addresses.weight.grad.to_dense(), m.values.weight.grad.to_dense()))
    for got, want in zip(out[1], out[0]):
        assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(exact.topk.gaba_counters, approx.topk.gaba_counters)
    assert torch.equal(exact.activity_window, approx.activity_window)
    stats = approx.neuron_stats()
    assert stats["search_approx_fraction"] == 1.0 and stats["search_union_fraction"] == 1.0
    assert stats["search_topk_recall"] == 1.0 and stats["search_active_recall"] == 1.0


def test_few_candidates_gradient_equals_autograd_on_those_neurons():
    """With few candidates, logits and gradients are those of the Top-K layer restricted to the
    candidate neurons (autograd through the individual operations on that sub-layer)."""
    counters = torch.arange(N, dtype=torch.int64) * 3
    exact, approx = model_pair(candidates=4, counters=counters)
    approx.set_row_sparse_updates(True)
    x, y = data()
    x = approx.prepare_inputs(x)
    cols = approx.candidates(x)
    approx.search.stats.zero_()
    assert cols is not None and K + 1 <= len(cols) < N
    logits = approx(x, prepared=True)
    F.cross_entropy(logits, y).backward()
    # reference: the same sub-layer in autograd
    w1 = exact.addresses.weight.detach()[cols].clone().requires_grad_(True)
    w2 = exact.values.weight.detach()[:, cols].clone().requires_grad_(True)
    r = torch.relu(x @ w1.T)
    v = torch.topk(r.detach(), K + 1, dim=1).values[:, -1:]
    g = exact.topk.responses(cols)
    ref_logits = torch.relu(r - v * g) @ w2.T
    F.cross_entropy(ref_logits, y).backward()
    assert torch.allclose(logits, ref_logits, atol=1e-6)
    gw1 = approx.addresses.weight.grad.to_dense()
    gw2 = approx.values.weight.grad.to_dense()
    assert torch.allclose(gw1[cols], w1.grad, atol=1e-6) and torch.allclose(gw2[:, cols], w2.grad, atol=1e-6)
    others = torch.ones(N, dtype=torch.bool)
    others[cols] = False
    assert gw1[others].abs().sum() == 0 and gw2[:, others].abs().sum() == 0
    # every input's 4 best approximate scores are candidates
    s = (x @ approx.search.projection) @ approx.search.index.T
    assert set(torch.topk(s, 4, dim=1).indices.reshape(-1).tolist()) <= set(cols.tolist())


@pytest.mark.parametrize("state", ["mixed", "switched"])
def test_threshold_rule_with_exact_scores_finds_every_active_neuron(state):
    """With P spanning the inputs (rank = d) the prescreen's scores are exact, and the margin
    rule (score ≥ (1 − margin)·g·ṽ, ṽ ≤ v_{k+1}) keeps every neuron that is active or among
    the k+1 largest: the layer is the exact one, though it computed only the candidates."""
    counters = torch.arange(N, dtype=torch.int64) * 2 + 50 if state == "mixed" else torch.full((N,), 100)
    exact, approx = model_pair(candidates=0, counters=counters, margin=0.02, rank=D)
    x, y = data()
    x = approx.prepare_inputs(x)
    cols = approx.candidates(x)
    assert cols is not None and len(cols) < N  # not every neuron had to be computed
    approx.search.stats.zero_()
    logits = approx(x, prepared=True)
    assert torch.allclose(logits, exact(x, prepared=True), atol=1e-6)
    stats = approx.neuron_stats()
    assert stats["search_topk_recall"] == 1.0 and stats["search_active_recall"] == 1.0


def test_exact_path_where_the_search_does_not_pay():
    x, _ = data()
    _, approx = model_pair(candidates=8)
    assert approx.candidates(x) is not None
    approx.search.min_neurons = N + 1  # a layer smaller than search_min_neurons
    assert approx.candidates(x) is None
    approx.search.min_neurons = 0
    approx.search.max_union = 0.5
    approx.topk.gaba_counters.zero_()  # the GABA switch phase: every neuron excited
    assert approx.candidates(x) is None
    approx.topk.gaba_counters.fill_(100)
    assert approx.candidates(x) is not None
    approx.search.max_union = 0.2  # more candidates than 20% of the layer
    assert approx.candidates(x) is None
    approx.train()
    approx.search.stats.zero_()
    approx(x)
    assert approx.neuron_stats()["search_approx_fraction"] == 0.0


def engine_for(tmp_path, name, epochs=2, **model):
    raw = {"name": name, "data": {"source": "digits"}, "seed": 4,
           "model": {"name": "sdmlp", "neurons": 96, "k": 4, "gaba_switch_activations": 800, "topk_search": "lowrank",
                     "search_rank": 8, "search_margin": None, "search_candidates": 6, "search_min_neurons": 0,
                     "search_recall_every": 2,
                     "search_max_union": 0.6, **model},
           "optim": {"name": "sgd", "lr": 0.3},
           "train": {"epochs_per_task": epochs, "threads": 1, "batch_size": 64}, "benchmark": {"num_tasks": 2},
           "output": {"dir": str(tmp_path), "progress": False, "plots": False}}
    cfg = parse_config(raw)
    rd = RunDir(tmp_path / name)
    rd.create(cfg)
    engine = Engine(prepare(cfg), rd, progress=False, log=lambda s: None)
    engine.model.apply_constraints()
    return engine


def test_index_follows_the_addresses_and_constraints_hold(tmp_path):
    engine = engine_for(tmp_path, "idx")
    model = engine.model
    task = engine.tasks[0]
    model.on_task_start(task)
    for e in range(4):
        engine.train_epoch(task, e)
    search = model.search
    assert search.index is not None  # built, and refreshed row by row after every step
    w = model.addresses.weight.detach()
    assert torch.allclose(search.index, w @ search.projection, atol=1e-6)
    assert torch.allclose(w.norm(dim=1), torch.ones(len(w)), atol=1e-5) and (w >= 0).all()
    assert (model.values.weight >= 0).all()
    stats = model.neuron_stats()
    assert stats["search_approx_fraction"] > 0.5, stats
    assert 0 < stats["search_topk_recall"] <= 1 and 0 < stats["search_active_recall"] <= 1


def test_lowrank_run_resumes_bit_for_bit(tmp_path):
    """A run stopped after its first epoch (mid-task) and resumed from its checkpoint ends with
    the same weights, counters, principal directions and metrics as the run done in one go."""
    import signal

    from sdmcl.train.checkpoint import load_checkpoint
    from sdmcl.train.engine import StopRequested, run

    whole = engine_for(tmp_path, "whole").cfg
    rd_whole, _ = run(whole, progress=False, log=lambda s: None)
    part = engine_for(tmp_path, "part")
    part.run_dir = RunDir(tmp_path / "part-run")
    part.run_dir.create(part.cfg)
    part.stop_signal = signal.SIGTERM
    with pytest.raises(StopRequested):
        part.run(resume=False)
    resumed = engine_for(tmp_path, "part")
    resumed.run_dir = part.run_dir
    resumed.run(resume=True)
    a = load_checkpoint(rd_whole.model_path)["model"]
    b = load_checkpoint(part.run_dir.model_path)["model"]
    assert a.keys() == b.keys() and "search.projection" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    metrics = [rd.metrics_path.read_text().splitlines() for rd in (rd_whole, part.run_dir)]
    assert len(metrics[0]) == len(metrics[1]) == 4
    assert [json.loads(line) for line in metrics[0]] == [json.loads(line) for line in metrics[1]]
    assert any(json.loads(line)["search_approx_fraction"] for line in metrics[0])


def test_config_checks():
    with pytest.raises(ConfigError, match="model.topk_search"):
        SDMLPConfig(topk_search="lowrank", bias=True).check()
    with pytest.raises(ConfigError, match="model.search_candidates"):
        SDMLPConfig(topk_search="lowrank", search_candidates=-1).check()
    with pytest.raises(ConfigError, match="model.search_margin"):
        SDMLPConfig(topk_search="lowrank", search_margin=None, search_candidates=0).check()
    with pytest.raises(ConfigError, match="model.search_max_union"):
        SDMLPConfig(topk_search="lowrank", search_max_union=0).check()
    # impossible search values are refused with the exact Top-K too (a typo'd sweep must not train)
    for key, value in (("search_margin", -1.0), ("search_max_union", 2.0), ("search_rank", 0)):
        with pytest.raises(ConfigError, match=f"model.{key}"):
            SDMLPConfig(**{key: value}).check()
    SDMLPConfig(bias=True).check()  # biases are fine with the exact Top-K

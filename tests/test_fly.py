"""FlyModel: projection, k-WTA sparsity, associative learning, end to end on digits."""

import numpy as np
import torch

from sdmcl.models.fly import FlyConfig, FlyModel, upper_quantile


def test_projection_has_exactly_n_response_ones_per_cell():
    m = FlyModel(FlyConfig(kenyon_cells=200, n_response=16), input_dim=64, num_classes=10)
    assert m.projection.shape == (200, 64)
    assert torch.all(m.projection.sum(1) == 16)
    assert set(m.projection.unique().tolist()) == {0.0, 1.0}


def test_about_one_percent_of_cells_active_and_max_is_one():
    torch.manual_seed(0)
    m = FlyModel(FlyConfig(kenyon_cells=2000, n_response=32), input_dim=100, num_classes=4)
    kc = m.kenyon_cells(torch.rand(50, 100))
    active = (kc > 0).sum(1).float()
    assert torch.all((active >= 19) & (active <= 21))  # ≥ 99th percentile of 2,000 cells: 20
    assert torch.allclose(kc.max(1).values, torch.ones(50))


def test_upper_quantile_matches_numpy():
    a = torch.rand(5, 333)
    for q in (0.99, 0.9, 0.5):
        assert np.allclose(upper_quantile(a, q).squeeze(1).numpy(), np.quantile(a.numpy(), q, axis=1))


def test_associative_learning_clips_at_one_and_predicts_only_learned_classes():
    m = FlyModel(FlyConfig(kenyon_cells=100, n_response=5, lr=0.4), input_dim=10, num_classes=3)
    x = torch.rand(4, 10)
    y = torch.tensor([1, 1, 1, 2])
    m.fit_task(x, y)
    kc = m.kenyon_cells(x)
    expected_1 = (0.4 * kc[:3].sum(0)).clamp(max=1.0)
    assert torch.allclose(m.weights[1], expected_1)
    assert torch.all(m.weights[0] == 0)  # class 0 not seen: untouched
    assert m.weights.max() <= 1.0
    logits = m(x)
    assert torch.all(torch.isinf(logits[:, 0])) and logits.argmax(1).ge(1).all()


def test_fly_runs_in_the_engine_on_digits(tmp_path):
    from sdmcl.config import parse_config
    from sdmcl.train.engine import run

    cfg = parse_config({"data": {"source": "digits"}, "model": {"name": "fly", "kenyon_cells": 500, "n_response": 16, "lr": 0.01},
                        "train": {"epochs_per_task": 1}, "output": {"dir": str(tmp_path), "plots": False, "progress": False}})
    _, summary = run(cfg, log=lambda s: None)
    assert summary["final_average_accuracy"] > 0.5  # far above the 20% of complete forgetting


def test_projection_follows_the_run_seed_unless_pinned():
    def projection(seed, pinned=None):
        torch.manual_seed(seed)
        return FlyModel(FlyConfig(kenyon_cells=50, n_response=4, projection_seed=pinned), 16, 2).projection

    assert torch.equal(projection(0), projection(0))
    assert not torch.equal(projection(0), projection(1))
    assert torch.equal(projection(0, pinned=7), projection(1, pinned=7))

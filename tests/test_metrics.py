"""Metrics against hand-computed accuracy matrices."""

import math

import numpy as np
import pytest

from sdmcl import metrics

# R[i][j]: accuracy on task j after training task i
R3 = np.array([
    [0.9, 0.1, 0.0],
    [0.6, 0.8, 0.2],
    [0.3, 0.7, 1.0],
])


def test_final_average_accuracy():
    assert metrics.final_average_accuracy(R3) == pytest.approx((0.3 + 0.7 + 1.0) / 3)  # 0.6667


def test_average_incremental_accuracy():
    # (0.9 + (0.6+0.8)/2 + (0.3+0.7+1.0)/3) / 3 = (0.9 + 0.7 + 0.6667) / 3 = 0.75556
    assert metrics.average_incremental_accuracy(R3) == pytest.approx((0.9 + 0.7 + 2.0 / 3) / 3)


def test_forgetting_uses_best_earlier_accuracy():
    # task 0: max(0.9, 0.6) − 0.3 = 0.6; task 1: max(0.8) − 0.7 = 0.1 → mean 0.35
    assert metrics.forgetting(R3) == pytest.approx(0.35)
    # a task that improved after it was learnt is not forgotten: best before last 0.5, final 0.5
    assert metrics.forgetting([[0.4, 0.0], [0.5, 0.9]]) == pytest.approx(-0.1)


def test_backward_transfer():
    # ((0.3 − 0.9) + (0.7 − 0.8)) / 2 = −0.35
    assert metrics.backward_transfer(R3) == pytest.approx(-0.35)
    assert metrics.backward_transfer([[0.5, 0.0], [0.7, 0.9]]) == pytest.approx(0.2)


def test_learning_accuracy_and_forward_transfer():
    assert metrics.learning_accuracy(R3) == pytest.approx(0.9)  # (0.9+0.8+1.0)/3
    # FWT: ((R[0,1] − b1) + (R[1,2] − b2)) / 2 = ((0.1 − 0.1) + (0.2 − 0.0)) / 2 = 0.1
    assert metrics.forward_transfer(R3, [0.5, 0.1, 0.0]) == pytest.approx(0.1)


def test_single_task():
    R = [[0.7]]
    s = metrics.summarize(R)
    assert s["final_average_accuracy"] == pytest.approx(0.7)
    assert s["forgetting"] == 0.0 and s["backward_transfer"] == 0.0


def test_complete_forgetting_of_five_tasks():
    R = np.tril(np.zeros((5, 5))) + np.eye(5)  # only the last-trained task is right
    assert metrics.final_average_accuracy(R) == pytest.approx(0.2)
    assert metrics.forgetting(R) == pytest.approx(1.0)
    assert metrics.backward_transfer(R) == pytest.approx(-1.0)


def test_non_square_is_rejected():
    with pytest.raises(ValueError):
        metrics.final_average_accuracy([[0.1, 0.2]])


def test_neuron_statistics():
    assert metrics.fraction_dead([0, 3, 0, 1]) == 0.5
    assert metrics.fraction_dead([0, 3, 0, 1], threshold=1) == 0.75
    h = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 0.5]])
    assert metrics.active_per_input(h) == pytest.approx(1.5)


def test_mean_sem():
    m, e = metrics.mean_sem([1.0, 2.0, 3.0])
    # std(ddof=1) = 1 → sem = 1/√3
    assert m == 2.0 and e == pytest.approx(1 / math.sqrt(3))
    assert metrics.mean_sem([5.0]) == (5.0, 0.0)

"""Class orders and task splits."""

import numpy as np
import pytest

from sdmcl.data.benchmarks import class_order, make_tasks, task_classes
from sdmcl.data.dataset import Dataset
from sdmcl.errors import ConfigError, DataError

# the reference's Split CIFAR-10 orders (RandomState(seed).choice(10, 10, replace=False))
REFERENCE_ORDERS = {
    3: [(5, 4), (1, 2), (9, 6), (7, 0), (3, 8)],
    15: [(2, 6), (1, 3), (7, 0), (9, 4), (5, 8)],
    27: [(4, 2), (9, 1), (5, 6), (7, 0), (8, 3)],
    97: [(7, 1), (2, 0), (6, 8), (4, 5), (9, 3)],
}


@pytest.mark.parametrize("seed", sorted(REFERENCE_ORDERS))
def test_seeded_orders_reproduce_the_reference(seed):
    assert task_classes(class_order(10, "seeded", seed), 2) == REFERENCE_ORDERS[seed]


def test_natural_order_and_explicit_list():
    assert task_classes(class_order(10), 2) == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert class_order(10, [3, 1, 2, 0]) == [3, 1, 2, 0]


@pytest.mark.parametrize("order, msg", [([], "empty"), ([1, 1], "more than once"), ([0, 12], "do not exist")])
def test_bad_orders(order, msg):
    with pytest.raises(ConfigError, match=msg):
        class_order(10, order)


def tiny_dataset():
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(4), 3)
    return Dataset("tiny", rng.rand(12, 1, 2, 2).astype(np.float32), y, rng.rand(8, 1, 2, 2).astype(np.float32),
                   np.repeat(np.arange(4), 2), 4, (1, 2, 2))


def test_tasks_keep_original_labels_and_flatten():
    tasks = make_tasks(tiny_dataset(), classes_per_task=2, order=[2, 0, 3, 1])
    assert [t.classes for t in tasks] == [(2, 0), (3, 1)]
    assert sorted(set(tasks[0].train_y.tolist())) == [0, 2]
    assert tasks[0].train_x.shape == (6, 4)
    assert len(tasks[1].test_y) == 4


def test_joint_and_num_tasks():
    assert [t.classes for t in make_tasks(tiny_dataset(), joint=True)] == [(0, 1, 2, 3)]
    assert len(make_tasks(tiny_dataset(), classes_per_task=1, num_tasks=3)) == 3
    with pytest.raises(ConfigError, match="does not divide"):
        make_tasks(tiny_dataset(), classes_per_task=3)


def test_labels_out_of_range_are_a_data_error():
    d = tiny_dataset()
    d.train_y[0] = 9
    with pytest.raises(DataError, match="labels outside"):
        make_tasks(d)

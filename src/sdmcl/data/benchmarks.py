"""Class-incremental benchmarks: class orders and the cut of a data set into tasks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sdmcl.data.dataset import Dataset
from sdmcl.errors import ConfigError, DataError


def class_order(num_classes: int, order: str | list[int] = "natural", seed: int | None = None) -> list[int]:
    """The order in which classes are presented.

    - `"natural"`: 0, 1, …, C−1.
    - `"seeded"`: the permutation `numpy.random.RandomState(seed).choice(C, C, replace=False)`,
      which is how the reference drew its Split CIFAR-10 orders (seed 3 → 5 4 1 2 9 6 7 0 3 8).
    - a list: used as given (must be a permutation of a subset of the classes).
    """
    if isinstance(order, list):
        if not order:
            raise ConfigError("benchmark.class_order: the list is empty; give the class ids in order, or 'natural'")
        bad = [c for c in order if not 0 <= c < num_classes]
        if bad:
            raise ConfigError(f"benchmark.class_order: classes {bad} do not exist (the data has classes 0..{num_classes - 1})")
        dup = sorted({c for c in order if order.count(c) > 1})
        if dup:
            raise ConfigError(f"benchmark.class_order: classes {dup} appear more than once")
        return [int(c) for c in order]
    if order == "natural":
        return list(range(num_classes))
    if order == "seeded":
        if seed is None:
            raise ConfigError("benchmark.class_order_seed: required when class_order is 'seeded' (the paper used 3, 15, 27, 97)")
        return [int(c) for c in np.random.RandomState(seed).choice(num_classes, num_classes, replace=False)]
    raise ConfigError(f"benchmark.class_order: {order!r} is not 'natural', 'seeded' or a list of class ids")


def task_classes(order: list[int], classes_per_task: int) -> list[tuple[int, ...]]:
    if classes_per_task < 1 or len(order) % classes_per_task:
        raise ConfigError(
            f"benchmark.classes_per_task: {classes_per_task} does not divide the {len(order)} classes of the order"
        )
    return [tuple(order[i : i + classes_per_task]) for i in range(0, len(order), classes_per_task)]


@dataclass
class Task:
    """One task: its classes and its data, as tensors resident on the training device.
    `val_x`/`val_y` hold a validation split taken out of the training data
    (`hold_out_validation`), or are None."""

    index: int
    classes: tuple[int, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None

    @property
    def name(self) -> str:
        return "task" + str(self.index) + "(" + ",".join(map(str, self.classes)) + ")"


def _select(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The rows of `t` where `mask` holds; `t` itself (no copy) when it holds everywhere, as in
    joint training: ImageNet32's training images are 15.7 GB as float32."""
    return t if bool(mask.all()) else t[mask].contiguous()


def make_tasks(
    data: Dataset,
    classes_per_task: int = 2,
    order: str | list[int] = "natural",
    seed: int | None = None,
    joint: bool = False,
    num_tasks: int | None = None,
    device: torch.device | str = "cpu",
) -> list[Task]:
    """Cut `data` into class-incremental tasks; labels keep their original ids (one shared head).

    `joint=True` gives a single task holding every class of the order (pretraining, oracle).
    Inputs are flattened: models see (N, d).
    """
    for split, y in (("train", data.train_y), ("test", data.test_y)):
        if y.size and (y.min() < 0 or y.max() >= data.num_classes):
            raise DataError(
                f"{data.name}: {split} labels outside 0..{data.num_classes - 1} (found {int(y.min())}..{int(y.max())}); "
                "the data file is corrupt or belongs to another data set"
            )
    order_list = class_order(data.num_classes, order, seed)
    groups = [tuple(order_list)] if joint else task_classes(order_list, classes_per_task)
    if num_tasks is not None:
        if not 1 <= num_tasks <= len(groups):
            raise ConfigError(f"benchmark.num_tasks: {num_tasks} is not in 1..{len(groups)}")
        groups = groups[:num_tasks]
    train_x = torch.from_numpy(np.ascontiguousarray(data.train_x, dtype=np.float32)).reshape(len(data.train_x), -1)
    test_x = torch.from_numpy(np.ascontiguousarray(data.test_x, dtype=np.float32)).reshape(len(data.test_x), -1)
    train_y = torch.from_numpy(data.train_y.astype(np.int64))
    test_y = torch.from_numpy(data.test_y.astype(np.int64))
    tasks = []
    for i, classes in enumerate(groups):
        cls = torch.tensor(classes)
        tr = torch.isin(train_y, cls)
        te = torch.isin(test_y, cls)
        if not bool(tr.any()):
            raise DataError(f"{data.name}: no training samples of classes {classes}; the data file looks incomplete")
        tasks.append(
            Task(
                index=i,
                classes=tuple(int(c) for c in classes),
                train_x=_select(train_x, tr).to(device),
                train_y=_select(train_y, tr).to(device),
                test_x=_select(test_x, te).to(device),
                test_y=_select(test_y, te).to(device),
            )
        )
    return tasks


def hold_out_validation(tasks: list[Task], fraction: float, seed: int) -> list[Task]:
    """Copies of `tasks` whose training data lose a random `fraction` (per task, at least one
    sample, at least one left) to a validation split in `val_x`/`val_y`. The draw depends
    on `seed` and the task index only, so a resumed run holds out the same samples.
    Training samples keep their order; test data are untouched."""
    out = []
    for t in tasks:
        n = len(t.train_y)
        n_val = min(max(1, round(fraction * n)), n - 1)
        if n_val < 1:
            raise DataError(f"{t.name}: {n} training sample(s) cannot be split into training and validation data")
        gen = torch.Generator().manual_seed((seed + 1_000_003 * t.index) % 2**63)
        is_val = torch.zeros(n, dtype=torch.bool)
        is_val[torch.randperm(n, generator=gen)[:n_val]] = True
        is_val = is_val.to(t.train_y.device)
        out.append(Task(t.index, t.classes, t.train_x[~is_val], t.train_y[~is_val], t.test_x, t.test_y,
                        val_x=t.train_x[is_val], val_y=t.train_y[is_val]))
    return out

"""The in-memory form every data source returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Dataset:
    """A labelled train/test split held as numpy arrays.

    `train_x`/`test_x` are float32 arrays of shape (N, *input_shape); pixels come in the
    scale the source was asked for ([0, 1] by default, as the reference; [0, 255] for
    raw values). Labels are int64 class ids in [0, num_classes).
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.input_shape))

"""Evaluation of a model on the test splits of a run's tasks.

The test sets of every task are concatenated once (in task order) and, for models with a
fixed input transform (`prepare_inputs`), transformed once, so an evaluation is a few large
matrix products in chunks of `train.eval_batch_size`. One evaluation gives, for the first
`num_tasks` tasks: class-incremental accuracy (argmax over every class), task-aware
accuracy (argmax among the classes of the sample's own task), and the mean number of
hidden units > 0 per input (models with `forward_with_hidden`).

Models that declare `takes_labels` (models/base.py) get each test sample's true label too:
their accuracy is label-informed, not a prediction from the input alone.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from sdmcl.data.benchmarks import Task


class Evaluator:
    def __init__(self, tasks: list[Task], num_classes: int, device: torch.device, prepare_inputs=None,
                 takes_labels: bool = False):
        self.device = device
        self.takes_labels = takes_labels
        self.test_x = torch.cat([t.test_x for t in tasks])
        if prepare_inputs is not None:
            with torch.no_grad():
                self.test_x = prepare_inputs(self.test_x)
        self.forward_kwargs = {"prepared": True} if prepare_inputs is not None else {}
        self.test_y = torch.cat([t.test_y for t in tasks])
        self.test_task = torch.cat([torch.full((len(t.test_y),), i, device=device) for i, t in enumerate(tasks)])
        self.test_offsets = np.cumsum([0] + [len(t.test_y) for t in tasks])
        self.class_task = torch.full((num_classes,), -1, dtype=torch.long, device=device)
        for i, t in enumerate(tasks):
            self.class_task[list(t.classes)] = i

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, num_tasks: int, batch_size: int,
                 on_chunk: Callable[[], None] | None = None) -> dict:
        """Accuracy (class-incremental and task-aware) on the test sets of the first `num_tasks`
        tasks. `on_chunk` is called after every chunk (the engine's fault injection)."""
        was_training = model.training
        model.eval()
        end = int(self.test_offsets[num_tasks])
        pred = torch.empty(end, dtype=torch.long, device=self.device)
        pred_task_aware = torch.empty(end, dtype=torch.long, device=self.device)
        active = torch.zeros((), dtype=torch.float64, device=self.device)
        has_hidden = hasattr(model, "forward_with_hidden")
        kw = self.forward_kwargs
        for s in range(0, end, batch_size):
            e = min(s + batch_size, end)
            x = self.test_x[s:e]
            if self.takes_labels:
                kw = {**self.forward_kwargs, "labels": self.test_y[s:e]}
            if has_hidden:
                logits, h = model.forward_with_hidden(x, **kw)
                # units > 0, counted per row in float32 (exact) and summed in float64; on
                # CPU several times faster than (h > 0).sum()
                active += h.sign().clamp_min_(0).sum(1).sum(dtype=torch.float64)
            else:
                logits = model(x, **kw)
            if on_chunk is not None:
                on_chunk()
            torch.argmax(logits, 1, out=pred[s:e])
            # task-aware: the argmax only among the classes of the sample's own task
            other_task = self.class_task[None, :] != self.test_task[s:e, None]
            torch.argmax(logits.masked_fill_(other_task, float("-inf")), 1, out=pred_task_aware[s:e])
        model.train(was_training)
        y, tid = self.test_y[:end], self.test_task[:end]
        counts = torch.tensor(np.diff(self.test_offsets[: num_tasks + 1]), device=self.device).clamp_min(1)

        def accuracies(p: torch.Tensor) -> list[float]:
            return (torch.bincount(tid, weights=(p == y).float(), minlength=num_tasks) / counts).tolist()

        return {
            "task_accuracy": accuracies(pred),
            "task_aware_accuracy": accuracies(pred_task_aware),
            "active_per_input": float(active) / max(end, 1) if has_hidden else None,
        }

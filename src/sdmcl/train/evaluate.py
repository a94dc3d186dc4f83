"""Evaluation of a model on the test splits of a run's tasks.

The test sets of every task are concatenated once (in task order) and, for models with a
fixed input transform (`prepare_inputs`), transformed once, so an evaluation is a few large
matrix products in chunks of `train.eval_batch_size`. One evaluation gives, for the first
`num_tasks` tasks: class-incremental accuracy (argmax over every class), task-aware
accuracy (argmax among the classes of the sample's own task), the mean number of
hidden units > 0 per input (over all evaluated test sets, and over those of the tasks
trained so far) and, over the latter, each unit's summed activation (the reference's
dead-neuron statistic; models with `forward_with_hidden`).

The tasks trained so far ("seen") come first in the concatenated test set. With
`gaba_counting: reference` the engine passes `seen_context`, under which the seen tasks'
chunks are evaluated (the reference counted GABA activations during its validation on
them); the chunks of later tasks are evaluated outside it.

Models that declare `takes_labels` (models/base.py) get each test sample's true label too:
their accuracy is label-informed, not a prediction from the input alone.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

import numpy as np
import torch

from sdmcl import metrics
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

    def test_sizes(self, num_tasks: int) -> list[int]:
        """Test samples of each of the first `num_tasks` tasks."""
        return [int(n) for n in np.diff(self.test_offsets[: num_tasks + 1])]

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, num_tasks: int, batch_size: int,
                 on_chunk: Callable[[], None] | None = None, seen_tasks: int | None = None,
                 seen_context: Callable[[], ContextManager] | None = None) -> dict:
        """Accuracy (class-incremental and task-aware) on the test sets of the first `num_tasks`
        tasks, of which the first `seen_tasks` (default: all) have been trained. `on_chunk`
        is called after every chunk (the engine's fault injection)."""
        was_training = model.training
        model.eval()
        end = int(self.test_offsets[num_tasks])
        seen_end = end if seen_tasks is None else int(self.test_offsets[min(seen_tasks, num_tasks)])
        pred = torch.empty(end, dtype=torch.long, device=self.device)
        pred_task_aware = torch.empty(end, dtype=torch.long, device=self.device)
        active = torch.zeros((), dtype=torch.float64, device=self.device)
        seen_active = torch.zeros((), dtype=torch.float64, device=self.device)
        activation_sums = None  # per unit, over the seen tasks' test samples
        has_hidden = hasattr(model, "forward_with_hidden")
        kw = self.forward_kwargs
        # chunks in one run over [0, end); with a seen_context the seen tasks' chunks are
        # evaluated inside it and the boundary to the later tasks starts a new chunk
        if seen_context is None:
            segments = [(0, end, nullcontext)]
        else:
            segments = [(0, seen_end, seen_context), (seen_end, end, nullcontext)]
        for first, last, context in segments:
            with context():
                for s in range(first, last, batch_size):
                    e = min(s + batch_size, last)
                    x = self.test_x[s:e]
                    if self.takes_labels:
                        kw = {**self.forward_kwargs, "labels": self.test_y[s:e]}
                    if has_hidden:
                        logits, h = model.forward_with_hidden(x, **kw)
                        # units > 0, counted per row in float32 (exact) and summed in float64; on
                        # CPU several times faster than (h > 0).sum()
                        row_active = h.sign().clamp_min_(0).sum(1)
                        active += row_active.sum(dtype=torch.float64)
                        if s < seen_end:
                            seen_active += row_active[: seen_end - s].sum(dtype=torch.float64)
                            # per unit, summed in float32 per chunk, in float64 across chunks
                            chunk_sums = h[: seen_end - s].sum(0)
                            if activation_sums is None:
                                activation_sums = torch.zeros(chunk_sums.shape, dtype=torch.float64, device=self.device)
                            activation_sums += chunk_sums
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
            "seen_active_per_input": float(seen_active) / max(seen_end, 1) if has_hidden else None,
            # the reference's definition: summed activation over the seen tasks' test sets < 1e-4
            "fraction_dead_reference_test": (metrics.fraction_dead_by_activation(activation_sums.cpu().numpy())
                                             if activation_sums is not None else None),
        }

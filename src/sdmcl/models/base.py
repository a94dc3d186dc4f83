"""What the engine expects of a model, and the config fields every model shares.

A model is a `torch.nn.Module` whose `forward(x)` maps a batch of flattened inputs
(B × d) to logits over all classes (B × C). A builder that declares an `input_shape`
parameter also receives one sample's shape, e.g. (C, H, W) for images (image models
reshape the flat rows; `registry.build_model`). It knows nothing of training loops; the
engine calls these optional hooks when it defines them:

- `apply_constraints()`      after every optimizer step and once before training
                             (SDMLP: clamp weights ≥ 0, unit-norm address rows).
- `before_step()`            after backward, before clipping and the optimizer step
                             (e.g. masking gradients of frozen or pruned weights).
- `on_epoch_start(epoch)`    `epoch` counts all epochs of the run from 0 (k schedules).
- `on_task_start(task)` / `on_task_end(task)`   a `sdmcl.data.benchmarks.Task`.
- `on_task_resume(task)`     a run resumed in the middle of `task` (its state is restored
                             from the checkpoint; only references to the data are needed).
- `hidden(x)`                hidden activations (B × n) for neuron statistics.
- `prepare_inputs(x)`        a fixed per-sample input transform without parameters (SDMLP:
                             relu and L2 normalisation). The engine then applies it once
                             to each data split and calls `forward(x, prepared=True)` and
                             `forward_with_hidden(x, prepared=True)` instead of
                             transforming every minibatch again.
- `reset_head(num_classes)`  new output layer (continual run from a pretrained model).
- `set_row_sparse_updates(enabled, all_rows_move=False)`  called by the engine: True when
                             every optimizer step changes only parameter rows with a
                             non-zero gradient (plain SGD, no weight decay, no regularizer
                             with per-step hooks), so the model may send sparse COO
                             gradients and constrain only the changed rows. Called again
                             with `all_rows_move=True` while a regularizer's closed-form
                             penalty gradient is added to them (every row can then move).
- `embed(x)`                 image models (convmixer, convsdm): the features after global
                             average pooling, before the head, (B × hdim). A finished run's
                             `model.pt` carries its config; `train.checkpoint.load_model(path)`
                             rebuilds the model with the registry, weights loaded, in eval
                             mode, ready for `embed` (the embedding pipeline relies on it).

Class attribute `supports_mixed_precision = True` lets `train.precision: bf16 | fp16` run
the model's forward under CUDA autocast (the image models; the others train in fp32).

- `on_epoch_end(task, epoch_in_task)`  after each training epoch of `task` (`epoch_in_task`
                             counts from 1), before that epoch's evaluation and checkpoint.
                             It, `on_task_start` and `on_task_end` may return a
                             `TrainingRequest` (below).
Models trained without gradients set `uses_gradients = False` and implement
`fit_task(x, y)`: the engine calls it once per epoch with the task's training tensors.
Model state that is not a parameter (GABA counters, masks) lives in registered buffers,
so `state_dict()` checkpoints and restores it.

Capabilities a model declares with attributes (absent means False):
- `takes_labels`      forward takes the true labels: the engine calls `forward(x, labels=y)`
                      (and `forward_with_hidden(x, labels=y)`) in training *and* evaluation.
                      Such runs are label-informed: the label reaches the model at test time
                      (summary.json: `label_informed: true`; printed tables mark them).
- `task_incremental`  the model is evaluated task-incrementally (one head per task, the task
                      given at test time): the headline metrics and accuracy matrix are the
                      task-aware ones (summary.json: `task_incremental: true`).

A model that needs settings outside its own config section (a validation split, enough
epochs per task) checks them in its config's `check_run(run_config)`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainingRequest:
    """What a model asks of the engine from `on_task_start`, `on_epoch_end` or `on_task_end`.

    `reset_optimizer`: continue with a fresh optimizer state (as if the optimizer were built
    anew: no momentum, Adam's moments and step count zero), e.g. at a training phase boundary.
    `end_task`: this task's training is over now, before `train.epochs_per_task` epochs
    (which is then the most a task may take); the engine goes on with `on_task_end`.
    `warning`: one line the engine prints and records in summary.json (once per run).
    """

    reset_optimizer: bool = False
    end_task: bool = False
    warning: str | None = None


@dataclass
class ModelConfig:
    name: str = ""

    def check(self) -> None:
        """Raise `ConfigError` naming the key when a value is impossible."""

    def check_run(self, run_config) -> None:
        """Raise `ConfigError` when the run's other sections (`run_config.train`, ...) do not
        give this model what it needs. Called after every section is validated."""

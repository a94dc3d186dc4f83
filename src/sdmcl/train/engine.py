"""The training engine: tasks → epochs → minibatches, with evaluation, checkpoints, outputs.

Data stays resident on the device as tensors; a minibatch is an `index_select` of a
seeded permutation, so there is no per-sample Python and no DataLoader in the hot path.
Randomness is derived from (seed, task, epoch) at the start of every epoch, which makes
a resumed run draw exactly what the uninterrupted run would have drawn.

A model's fixed input transform (`prepare_inputs`, SDMLP: relu + L2 norm) is applied once
per data split instead of to every minibatch.

Optional per-step extras, each None (and free) unless configured: augmentation of the
minibatch (`augment.*`, data/augment.py, its generator seeded from (seed, task, epoch)),
a learning-rate schedule (`optim.schedule`, train/optim.py) and mixed precision on CUDA
(`train.precision`, train/precision.py).

Order of operations per step (hooks are optional, see models/base.py, regularizers/base.py):
    logits = model(x); loss = CE(logits, y) + regularizer.penalty(model)
    loss.backward(); regularizer.before_step(model, logits, y); model.before_step()
    clip the global gradient norm; optimizer.step()
    model.apply_constraints(); regularizer.after_step(model)
A quadratic penalty (EWC, MAS, SI, L2: `regularizer.quadratic_terms()`) is not built in
autograd: its closed-form gradient 2λ(A ⊙ θ − b) is added to the gradients right after
backward (`regularizers.base.QuadraticPenalty`), and its value to the reported loss.
With plain SGD on the CPU, clipping and the step are one p −= lr·c·g per parameter
(`optim.plain_sgd_step_`), with or without a regularizer.

Evaluation lives in `evaluate.py`; loggers and investigations are callbacks (`callbacks.py`)
that observe the run and keep their state in the checkpoint.

At the end of a task: the model's `on_task_end`, the evaluation, then the regularizer's
`on_task_end` (its importance passes follow the task's last evaluation, as in the
reference, which computed them at the start of the next task). With `gaba_counting:
reference` the evaluation of the seen tasks and the importance passes before a next task
run inside `reference_counting_passes` (models/topk.py): the GABA counters count them.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from sdmcl import metrics
from sdmcl.config import RunConfig, config_id
from sdmcl.data.augment import build_augmenter
from sdmcl.data.benchmarks import Task, hold_out_validation, make_tasks
from sdmcl.data.fingerprint import content_id as data_content_id
from sdmcl.errors import CheckpointError, ConfigError, DataError, DivergenceError, OutputError, UserError
from sdmcl.models.topk import counts_reference_passes, reference_counting_passes
from sdmcl.registry import REGULARIZERS
from sdmcl.registry import build_model as build_registered_model
from sdmcl.regularizers.base import QuadraticPenalty, Regularizer
from sdmcl.train.callbacks import build_callbacks, overrides
from sdmcl.train.checkpoint import (checkpoint_content_id, config_differences, load_checkpoint, load_weights, save_checkpoint,
                                    weights_content_id)
from sdmcl.train.evaluate import Evaluator
from sdmcl.train.optim import build_optimizer, build_schedule, clip_coefficient, plain_sgd, plain_sgd_step_, scale_gradients_
from sdmcl.train.precision import build_mixed_precision
from sdmcl.train.rundir import (RunDir, RunLocked, config_edit_problem, evaluation_problem, read_resume_checkpoint, read_run_config,
                                 read_summary, run_dir_for)


def derived_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across runs and machines)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    from sdmcl.preflight import resolve_device

    return resolve_device(name)


def call_hook(obj, name: str, *args):
    fn = getattr(obj, name, None)
    if fn is not None:
        return fn(*args)
    return None


@dataclass
class Prepared:
    cfg: RunConfig
    tasks: list[Task]
    num_classes: int
    input_dim: int
    device: torch.device
    dataset_name: str
    input_shape: tuple[int, ...] = ()  # one sample's shape, e.g. (C, H, W); inputs are held flattened


def prepare(cfg: RunConfig) -> Prepared:
    """Load the data and cut the tasks; raises a UserError before anything is written."""
    from sdmcl.data.sources import load_dataset
    from sdmcl.preflight import check_data_memory

    device = pick_device(cfg.train.device)
    data = load_dataset(cfg.data.source, path=cfg.data.path, data_dir=cfg.data.data_dir,
                        pixel_scale=cfg.data.pixel_scale, download=cfg.data.download)
    check_data_memory(data, device)
    b = cfg.benchmark
    tasks = make_tasks(data, b.classes_per_task, b.class_order, b.class_order_seed, b.joint, b.num_tasks, device)
    return Prepared(cfg, tasks, data.num_classes, data.input_dim, device, data.name, tuple(data.input_shape))


def build_model(cfg: RunConfig, input_dim: int, num_classes: int, input_shape: tuple[int, ...] | None = None) -> torch.nn.Module:
    return build_registered_model(cfg.model, input_dim, num_classes, input_shape)


# model keys that say how a model is trained, not what its weights mean: a pretrained model
# may have been trained with other values (dropout: the paper's Dropout row, a ReLU MLP pretrained
# without it and continual with p = 0.03; the k schedule: the reference's ConvSDM continual runs
# switched from a decaying mask to subtraction; how the SDMLP computes its backward pass)
TRAINING_ONLY_MODEL_KEYS = ("gaba_counting", "dropout", "k_approach", "k_max", "k_transition_epochs", "sparse_backward")


def init_from_differences(pretrained_model: dict, model: dict) -> list[str]:
    """Model settings (dotted keys) in which a run differs from the model it starts from."""
    ours = {k: v for k, v in model.items() if k not in TRAINING_ONLY_MODEL_KEYS}
    theirs = {k: v for k, v in (pretrained_model or {}).items() if k not in TRAINING_ONLY_MODEL_KEYS}
    return config_differences(theirs, ours, "model.")


def checkpoint_epochs(ckpt: dict) -> int:
    """Epochs the checkpointed model has been trained, across init_from chains (0 if unknown)."""
    if "epochs_trained" in ckpt:
        return int(ckpt["epochs_trained"])
    position = ckpt.get("position") or {}
    return int(position.get("epochs_done", 0))


def load_pretrained(cfg: RunConfig, input_dim: int, num_classes: int, device,
                    input_shape: tuple[int, ...] | None = None) -> tuple[torch.nn.Module, int, str]:
    """Table 1 protocol: the pretrained network, a fresh output head, GABA counters kept.
    Returns the model, the epochs it was trained (the position of its k schedule) and the
    checkpoint's content id (`weights_content_id`)."""
    try:
        ckpt = load_checkpoint(cfg.init_from)
    except CheckpointError as e:  # say which setting named the file
        raise CheckpointError(f"init_from {e}") from None
    pre = ckpt["config"]
    diffs = init_from_differences(pre.get("model", {}), cfg.to_dict()["model"])
    if diffs:
        raise CheckpointError(f"init_from {cfg.init_from}: model config differs from the pretrained one: {'; '.join(diffs)}; make them equal")
    pre_classes, pre_dim = ckpt.get("num_classes"), ckpt.get("input_dim")
    if pre_classes is None or pre_dim is None:
        raise CheckpointError(f"init_from {cfg.init_from}: the checkpoint does not record the model's input and class "
                              "counts; use a model.pt or checkpoint written by sdmcl")
    if pre_dim != input_dim:
        raise DataError(f"init_from {cfg.init_from}: the pretrained model takes {pre_dim} inputs but data.source gives {input_dim}")
    pre_shape = ckpt.get("input_shape")
    if pre_shape is not None and input_shape is not None and tuple(pre_shape) != tuple(input_shape):
        raise DataError(f"init_from {cfg.init_from}: the pretrained model takes inputs of shape {tuple(pre_shape)} "
                        f"but data.source gives {tuple(input_shape)}")
    model = build_model(cfg, input_dim, pre_classes, input_shape)
    try:
        load_weights(model, ckpt["model"])
    except Exception as e:  # missing, unexpected or mis-shaped weights
        msg = " ".join(str(e).split())[:160] or type(e).__name__
        raise CheckpointError(f"init_from {cfg.init_from}: weights do not fit the model ({msg})") from None
    model.reset_head(num_classes)
    return model.to(device), checkpoint_epochs(ckpt), weights_content_id(ckpt)


@dataclass
class RunState:
    """Where a run is: everything the checkpoint must restore besides weights."""

    next_task: int = 0
    next_epoch_in_task: int = 0
    epochs_done: int = 0
    steps_done: int = 0
    history: list[dict] = field(default_factory=list)
    R: list[list[float]] = field(default_factory=list)
    R_task_aware: list[list[float]] = field(default_factory=list)
    train_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # one line each, as printed; summary.json lists them
    init_from_content: str | None = None  # hash of the checkpoint the run started from (init_from)


class FaultInjector:
    """Test-only fault injection: `SDMCL_FAULT=<point>:<n>[:<SIGNAL>]` sends SIGNAL (default
    SIGKILL) to this process at the n-th occurrence (1-based, counted from process start) of
    `point`: `step` (after an optimizer step), `eval` (inside an evaluation), `checkpoint`
    (after the temporary checkpoint file is written, before it replaces the old one)."""

    def __init__(self, spec: str | None):
        self.point, self.n, self.sig, self.counts = None, 0, signal.SIGKILL, {}
        if spec:
            parts = spec.split(":")
            self.point, self.n = parts[0], int(parts[1])
            if len(parts) > 2:
                self.sig = getattr(signal, parts[2])

    def __call__(self, point: str) -> None:
        if point != self.point:
            return
        self.counts[point] = self.counts.get(point, 0) + 1
        if self.counts[point] == self.n:
            os.kill(os.getpid(), self.sig)


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived: stop at the next safe point after writing a checkpoint.
    `run_dirs` are the directories to resume."""

    def __init__(self, *run_dirs):
        super().__init__(*run_dirs)
        self.run_dirs = [str(d) for d in run_dirs]


class Engine:
    def __init__(self, prepared: Prepared, run_dir: RunDir, progress: bool = True, log: Callable[[str], None] = print):
        self.p = prepared
        self.cfg = prepared.cfg
        self.run_dir = run_dir
        self.log = log
        self.progress = progress and self.cfg.output.progress
        self.device = prepared.device
        self.tasks = prepared.tasks
        if self.cfg.train.validation_fraction > 0:  # per run: the held-out samples depend on the seed
            self.tasks = hold_out_validation(self.tasks, self.cfg.train.validation_fraction,
                                             derived_seed(self.cfg.seed, "validation"))
        self.task_labels = [",".join(map(str, t.classes)) for t in self.tasks]
        self.stop_signal: int | None = None
        self.fault = FaultInjector(os.environ.get("SDMCL_FAULT"))
        self.fault_on = self.fault.point is not None

        cfg = self.cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if self.device.type == "cpu":
            torch.set_flush_denormal(cfg.train.flush_denormal)
        seed_everything(derived_seed(cfg.seed, "init"))
        # epochs the model was trained before this run: the k schedule continues from there
        # (as the reference's combine_params.py did), unless train.restart_k_schedule
        self.epoch_offset = 0
        # the pretrained checkpoint's content, not its path, is what the run started from:
        # recorded in the training position and the summary, and checked on resume and reuse
        self.init_from_content: str | None = None
        if cfg.init_from:
            self.model, pretrained_epochs, self.init_from_content = load_pretrained(
                cfg, prepared.input_dim, prepared.num_classes, self.device, prepared.input_shape)
            self.epoch_offset = 0 if cfg.train.restart_k_schedule else pretrained_epochs
        else:
            self.model = build_model(cfg, prepared.input_dim, prepared.num_classes, prepared.input_shape).to(self.device)
        self.reference_counting = counts_reference_passes(self.model)
        self.uses_gradients = getattr(self.model, "uses_gradients", True)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg.optim, self.params) if self.uses_gradients and self.params else None
        self.regularizer = REGULARIZERS[cfg.regularizer.name].build(cfg.regularizer, self.model)
        self.reg_active = cfg.regularizer.name != "none"
        self.retain_graph = bool(getattr(self.regularizer, "needs_logits_graph", False))
        # a quadratic penalty's gradient in closed form, added after backward (regularizers/base.py)
        self.quadratic = QuadraticPenalty() if self.reg_active and self.regularizer.closed_form() else None
        # plain SGD: a step is p −= lr·g, so on CPU the whole update, clipping included, is
        # one p −= lr·c·g per parameter (optim.plain_sgd_step_).
        self.plain_sgd = self.optimizer is not None and plain_sgd(cfg.optim)
        # ... and when nothing but that step and at most a closed-form penalty reads the
        # gradients, a model may send row-sparse gradients (SDMLP after the GABA switch). A
        # step then changes only rows with a non-zero gradient, unless a penalty is active:
        # its gradient moves every row (`all_rows_move`, set per epoch below).
        reg_hooks = self.reg_active and any(getattr(type(self.regularizer), hook) is not getattr(Regularizer, hook)
                                            for hook in ("before_step", "after_step"))
        self.row_sparse = (hasattr(self.model, "set_row_sparse_updates") and self.plain_sgd
                           and (not self.reg_active or (self.quadratic is not None and not reg_hooks)))
        self._all_rows_move = False
        if hasattr(self.model, "set_row_sparse_updates"):
            self.model.set_row_sparse_updates(self.row_sparse)
        # per-step extras, None unless configured (module docstring)
        self.augment = build_augmenter(cfg.augment, prepared.input_shape)
        self.schedule = build_schedule(cfg.optim, cfg.train.epochs_per_task, len(self.tasks)) if self.optimizer else None
        self.amp = build_mixed_precision(cfg.train.precision, self.device, self.model)
        self.state = RunState(init_from_content=self.init_from_content)
        # train/stacked.py: when set, this run's training epochs are trained by it, together
        # with other runs' (everything else stays this engine's)
        self.epoch_trainer: Callable | None = None
        # a model's fixed input transform (SDMLP: relu, L2 norm) is applied once per data
        # split, not to every minibatch (models/base.py: prepare_inputs)
        self.prepare_inputs = getattr(self.model, "prepare_inputs", None)
        self.forward_kwargs = {"prepared": True} if self.prepare_inputs is not None else {}
        # label-informed models get the true labels in training and evaluation (models/base.py)
        self.takes_labels = bool(getattr(self.model, "takes_labels", False))
        # task-incremental models are scored with the task given at test time (task-aware accuracy)
        self.task_incremental = bool(getattr(self.model, "task_incremental", False))
        self._train_inputs: tuple[int, torch.Tensor] | None = None  # (task index, its prepared inputs)
        self.evaluator = Evaluator(self.tasks, prepared.num_classes, self.device, self.prepare_inputs,
                                   takes_labels=self.takes_labels)
        self.callbacks = build_callbacks(cfg)
        self.step_callbacks = [cb for cb in self.callbacks if overrides(cb, "after_step")]
        self.provenance = None  # a provenance.Session while `run()` trains

    # ------------------------------------------------------------ checkpoints

    def checkpoint_payload(self, full: bool = True) -> dict:
        payload = {
            "config": self.cfg.to_dict(),
            "num_classes": self.p.num_classes,
            "input_dim": self.p.input_dim,
            "input_shape": list(self.p.input_shape),
            "model": self.model.state_dict(),
            # the model's epochs including its pretraining: an init_from run continues its k schedule
            "epochs_trained": self.epoch_offset + self.state.epochs_done,
        }
        if full:
            payload.update(
                optimizer=self.optimizer.state_dict() if self.optimizer else None,
                regularizer=self.regularizer.state_dict(),
                position=self.state.__dict__.copy(),
                callbacks={cb.name: cb.state_dict() for cb in self.callbacks},
            )
            if self.amp is not None:
                payload["grad_scaler"] = self.amp.state_dict()
        return payload

    def save(self) -> None:
        save_checkpoint(self.run_dir.checkpoint_path, self.checkpoint_payload(),
                        before_replace=(lambda: self.fault("checkpoint")) if self.fault_on else None)

    def restore(self, ckpt: dict | None = None) -> None:
        """Load the run's checkpoint (or `ckpt`, already read with `read_resume_checkpoint`)."""
        if ckpt is None:
            ckpt = read_resume_checkpoint(self.run_dir, self.cfg, map_location=self.device)
        where = self.run_dir.checkpoint_path
        problem = self.position_problem(ckpt["position"])
        if problem:
            raise CheckpointError(f"{where}: does not fit this run ({problem}); delete it to start over")
        try:
            load_weights(self.model, ckpt["model"])
            if self.optimizer is not None and ckpt.get("optimizer") is not None:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            self.regularizer.load_state_dict(ckpt.get("regularizer") or {})
            if self.amp is not None:
                self.amp.load_state_dict(ckpt.get("grad_scaler") or {})
            self.state = RunState(**ckpt["position"])
            saved = ckpt.get("callbacks") or {}
            for cb in self.callbacks:
                cb.load_state_dict(saved.get(cb.name) or {})
        except Exception as e:  # any mismatch of the saved state with this run's model
            msg = " ".join(str(e).split())[:160] or type(e).__name__
            raise CheckpointError(f"{where}: does not fit this run ({type(e).__name__}: {msg}); delete it to start over") from None
        problem = self.state_shape_problem()
        if problem:
            raise CheckpointError(f"{where}: does not fit this run ({problem}); delete it to start over")
        problem = self.init_from_problem(ckpt["position"])
        if problem:
            raise CheckpointError(f"{where}: {problem}")
        if self.state.init_from_content is None:  # (a checkpoint written before sdmcl recorded it)
            self.state.init_from_content = self.init_from_content

    def init_from_problem(self, position: dict) -> str | None:
        """Why a checkpoint's run cannot go on from here: the `init_from` file it started from
        was replaced since (resuming would mix two starting models)."""
        started, now = position.get("init_from_content"), self.init_from_content
        if not self.cfg.init_from or started is None or now == started:
            return None
        return (f"this run started from init_from {self.cfg.init_from} as it was then (content {started}), and that file "
                f"has changed since ({'now ' + now if now else 'now missing'}); resuming would mix two starting models. "
                f"Train it again from the start: sdmcl run {self.run_dir.config_path} --rerun")

    def position_problem(self, pos: dict) -> str | None:
        """Whether a checkpoint's training position is one this run can reach."""
        T, E = len(self.tasks), self.cfg.train.epochs_per_task
        if pos["next_task"] > T:
            return f"position at task {pos['next_task']} of a run of {T} tasks"
        if pos["next_epoch_in_task"] >= E or (pos["next_task"] == T and pos["next_epoch_in_task"]):
            return f"position at epoch {pos['next_epoch_in_task']} of a task of {E} epochs"
        for key in ("R", "R_task_aware"):
            if len(pos[key]) != pos["next_task"] or any(len(row) != T for row in pos[key]):
                return f"its accuracy matrix {key} does not match {pos['next_task']} finished tasks of {T}"
        if pos["next_task"] and not pos["history"]:
            return "no evaluations recorded for finished tasks"
        for i, entry in enumerate(pos["history"]):
            problem = evaluation_problem(entry)
            if problem:
                return f"evaluation {i} of its history {problem}"
        return None

    def state_shape_problem(self) -> str | None:
        """Optimizer and regularizer state tensors must have the shapes of the parameters."""
        if self.optimizer is not None:
            for p in self.params:
                for name, value in self.optimizer.state.get(p, {}).items():
                    if isinstance(value, torch.Tensor) and value.dim() and value.shape != p.shape:
                        return f"optimizer state {name} has shape {tuple(value.shape)} for a parameter of shape {tuple(p.shape)}"
        shapes = {tuple(p.shape) for p in self.params}
        stack = [self.regularizer.state_dict()]
        while stack:
            item = stack.pop()
            if isinstance(item, torch.Tensor):
                if item.dim() and tuple(item.shape) not in shapes:
                    return f"regularizer state holds a tensor of shape {tuple(item.shape)}, the shape of no parameter"
            elif isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
        return None

    # ------------------------------------------------------------ evaluation

    def evaluate(self, num_tasks: int, seen_tasks: int | None = None) -> dict:
        """Accuracy (class-incremental and task-aware) on the test sets of the first `num_tasks`
        tasks, of which the first `seen_tasks` (default: all) have been trained. With
        gaba_counting `reference` the GABA counters count the seen tasks' test samples."""
        seen_context = (lambda: reference_counting_passes(self.model)) if self.reference_counting else None
        return self.evaluator.evaluate(self.model, num_tasks, self.cfg.train.eval_batch_size,
                                       on_chunk=(lambda: self.fault("eval")) if self.fault_on else None,
                                       seen_tasks=seen_tasks, seen_context=seen_context)

    def warn(self, message: str) -> None:
        """Print a one-line warning now and record it for summary.json (once per run)."""
        if message not in self.state.warnings:
            self.state.warnings.append(message)
            self.log(f"warning: {message}")

    def record(self, task: Task, epoch_in_task: int, train_loss: float, full: bool) -> dict:
        st = self.state
        ev = self.evaluate(len(self.tasks) if full else task.index + 1, seen_tasks=task.index + 1)
        seen = ev["task_accuracy"][: task.index + 1]
        entry = {
            "task": task.index,
            "epoch": st.epochs_done,
            "epoch_in_task": epoch_in_task,
            "train_loss": train_loss,
            "seen_average_accuracy": sum(seen) / len(seen),
            **ev,
        }
        if hasattr(self.model, "neuron_stats"):
            entry.update(self.model.neuron_stats())
        window = getattr(self.model, "activity_window", None)
        if window is not None:
            entry["fraction_dead"] = metrics.fraction_dead(window.cpu().numpy())
            window.zero_()
        sums = getattr(self.model, "activation_window", None)
        if sums is not None:
            # the reference's definition: summed activation over the training samples < 1e-4
            entry["fraction_dead_reference_train"] = metrics.fraction_dead_by_activation(sums.cpu().numpy())
            sums.zero_()
        st.history.append(entry)
        self.run_dir.append_metrics(entry)
        for cb in self.callbacks:
            cb.on_evaluation(self, entry)
        return entry

    # ------------------------------------------------------------ training

    def train_inputs(self, task: Task) -> torch.Tensor:
        """The task's training inputs as the model takes them (prepared once per task; only
        the current task's copy is kept). With augmentation the raw inputs: each augmented
        minibatch is prepared after augmenting."""
        if self.prepare_inputs is None or self.augment is not None:
            return task.train_x
        if self._train_inputs is None or self._train_inputs[0] != task.index:
            self._train_inputs = None
            with torch.no_grad():
                self._train_inputs = (task.index, self.prepare_inputs(task.train_x))
        return self._train_inputs[1]

    def train_epoch(self, task: Task, epoch_in_task: int) -> float | None:
        """One epoch on `task`; returns the mean training loss (None for gradient-free models)."""
        if self.epoch_trainer is not None:
            return self.epoch_trainer(self, task, epoch_in_task)
        cfg = self.cfg
        st = self.state
        model = self.model
        seed_everything(derived_seed(cfg.seed, "epoch", task.index, epoch_in_task))
        call_hook(model, "on_epoch_start", self.epoch_offset + st.epochs_done)
        model.train()
        if not self.uses_gradients:
            model.fit_task(task.train_x, task.train_y)
            return None
        x_all, y_all = self.train_inputs(task), task.train_y
        n, bs = len(y_all), cfg.train.batch_size
        gen = torch.Generator(device=self.device).manual_seed(derived_seed(cfg.seed, "order", task.index, epoch_in_task))
        perm = torch.randperm(n, generator=gen, device=self.device)
        opt, reg, clip = self.optimizer, self.regularizer, cfg.optim.grad_clip
        penalize = self.reg_active
        quadratic = self.quadratic
        if quadratic is not None:  # A and b change only at task ends (and on restore)
            if not quadratic.update(getattr(reg.cfg, "lam", 1.0), reg.quadratic_terms()):
                quadratic = None
            if self.row_sparse and (quadratic is not None) != self._all_rows_move:
                self._all_rows_move = quadratic is not None
                model.set_row_sparse_updates(True, all_rows_move=self._all_rows_move)
        has_before = hasattr(model, "before_step")
        has_constraints = hasattr(model, "apply_constraints")
        on_cpu = self.device.type == "cpu"  # reading a number on the host is free on CPU: no device sync
        lean_step = self.plain_sgd and on_cpu
        lr = opt.param_groups[0]["lr"] if lean_step else None
        augment, schedule, amp = self.augment, self.schedule, self.amp
        if augment is not None:
            aug_gen = torch.Generator(device=self.device).manual_seed(derived_seed(cfg.seed, "augment", task.index, epoch_in_task))
        steps = -(-n // bs)
        loss_total = 0.0 if on_cpu else torch.zeros((), device=self.device)
        for step, start in enumerate(range(0, n, bs)):
            idx = perm[start : start + bs]
            x, y = x_all.index_select(0, idx), y_all.index_select(0, idx)
            if augment is not None:
                x = augment(x, aug_gen)
                if self.prepare_inputs is not None:
                    x = self.prepare_inputs(x)
            if schedule is not None:
                lr = schedule.apply(opt, task.index, epoch_in_task, (step + 1) / steps)
            # label-informed models get the true labels (models/base.py: takes_labels)
            fkw = {**self.forward_kwargs, "labels": y} if self.takes_labels else self.forward_kwargs
            if amp is None:
                logits = model(x, **fkw)
                loss = F.cross_entropy(logits, y)
            else:
                with amp.autocast():
                    logits = model(x, **fkw)
                    loss = F.cross_entropy(logits, y)
            if penalize and self.quadratic is None:
                loss = loss + reg.penalty(model)
            if on_cpu:
                value = loss.item()
                if not math.isfinite(value):
                    self.diverged(task, epoch_in_task, step, "the loss")
                loss_total += value * len(y)
            else:
                loss_total += loss.detach() * len(y)
            if not lean_step:  # plain_sgd_step_ drops the gradients itself
                opt.zero_grad(set_to_none=True)
            if amp is None:
                loss.backward(retain_graph=self.retain_graph)
            else:
                amp.backward(loss, self.retain_graph)
                amp.unscale(opt)  # before anything reads the gradients
            if quadratic is not None:
                penalty = quadratic.add_gradients(self.params)
                if on_cpu:
                    penalty = float(penalty)
                    if not math.isfinite(penalty):
                        self.diverged(task, epoch_in_task, step, "the penalty")
                loss_total += penalty * len(y)
            if penalize:
                reg.before_step(model, logits, y)
            if has_before:
                model.before_step()
            if lean_step:
                plain_sgd_step_(self.params, lr, clip)
            elif clip is None:
                self.optimizer_step()
            else:
                self.clipped_step(clip)
            if has_constraints:
                model.apply_constraints()
            if penalize:
                reg.after_step(model)
            for cb in self.step_callbacks:
                cb.after_step(self)
            if self.fault_on:
                self.fault("step")
            st.steps_done += 1
        mean_loss = float(loss_total) / n
        if not math.isfinite(mean_loss):
            self.diverged(task, epoch_in_task, None, "the loss")
        # a NaN or inf anywhere makes the sum non-finite: one read of each parameter (finite
        # weights large enough to overflow the sum would be divergence too)
        if not all(math.isfinite(float(p.detach().sum())) for p in self.params):
            self.diverged(task, epoch_in_task, None, "a weight")
        return mean_loss

    def clipped_step(self, max_norm: float) -> None:
        """Clip the global gradient norm to `max_norm` (torch's formula), then step. (Plain SGD
        on CPU takes `plain_sgd_step_` instead.) On CPU the factor c = max_norm/(‖g‖+1e-6) is
        read, and when c ≥ 1 nothing is multiplied; on GPUs the gradients are scaled by
        min(1, c) without a host sync."""
        coef = clip_coefficient(self.params, max_norm)
        if self.device.type != "cpu":
            scale_gradients_(self.params, coef.clamp(max=1.0))
        elif float(coef) < 1.0:
            scale_gradients_(self.params, coef)
        self.optimizer_step()

    def optimizer_step(self) -> None:
        if self.amp is None:
            self.optimizer.step()
        else:  # fp16: skipped when a gradient overflowed
            self.amp.step(self.optimizer)

    def diverged(self, task: Task, epoch_in_task: int, step: int | None, what: str):
        where = f"task {task.index} ({task.name}), epoch {epoch_in_task + 1}" + (f", step {step}" if step is not None else "")
        optim = self.cfg.optim
        tries = [f"a smaller optim.lr (now {optim.lr})"]
        if optim.weight_decay:
            tries.append(f"a smaller optim.weight_decay (now {optim.weight_decay})")
        tries.append("enable optim.grad_clip" if optim.grad_clip is None else f"a smaller optim.grad_clip (now {optim.grad_clip})")
        raise DivergenceError(
            f"training diverged: {what} became non-finite at {where}; the last good checkpoint is kept. "
            f"Try {', '.join(tries[:-1])} or {tries[-1]}"
        )

    def handle_signal(self, signum, frame):
        self.stop_signal = signum

    def run(self, resume: bool, checkpoint: dict | None = None) -> dict:
        cfg, st, rd = self.cfg, self.state, self.run_dir
        if resume:
            self.restore(checkpoint)
            st = self.state
            rd.write_metrics(st.history)
            self.log(f"resuming {rd.path} at task {st.next_task}, epoch {st.next_epoch_in_task}")
        else:
            rd.clear_results()
        old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old_handlers[sig] = signal.signal(sig, self.handle_signal)
            except ValueError:  # not in the main thread
                pass
        try:
            for cb in self.callbacks:
                cb.on_run_start(self, resume)
            self._loop()
            summary = self.finish()
            for cb in self.callbacks:
                cb.on_run_end(self, summary)
            return summary
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            for cb in self.callbacks:
                cb.close()

    def _loop(self) -> None:
        cfg, rd = self.cfg, self.run_dir
        E = cfg.train.epochs_per_task
        bar = None
        for task in self.tasks[self.state.next_task :]:
            st = self.state
            if st.next_epoch_in_task == 0:
                self.apply_request(call_hook(self.model, "on_task_start", task))
                self.regularizer.on_task_start(self.model, task)
                for cb in self.callbacks:
                    cb.on_task_start(self, task)
            else:  # resumed mid-task: state is restored, only the task's data must be handed back
                call_hook(self.model, "on_task_resume", task)
            if self.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=E, initial=st.next_epoch_in_task, desc=f"task {task.index + 1}/{len(self.tasks)} [{task.name}]",
                           unit="ep", leave=False, dynamic_ncols=True, disable=None)  # None: off when stderr is no terminal
            for e in range(st.next_epoch_in_task, E):
                t0 = time.perf_counter()
                loss = self.train_epoch(task, e)
                st.epochs_done += 1
                st.next_epoch_in_task = e + 1
                # the model may end the task early (NISPA: its phases are over) or ask for a fresh optimizer
                model_ends_task = self.apply_request(call_hook(self.model, "on_epoch_end", task, e + 1))
                last = e == E - 1 or model_ends_task
                if not last and cfg.train.eval_every and (e + 1) % cfg.train.eval_every == 0:
                    entry = self.record(task, e + 1, loss, full=False)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.3f}" if loss is not None else "-", seen_acc=f"{entry['seen_average_accuracy']:.3f}")
                st.train_seconds += time.perf_counter() - t0
                for cb in self.callbacks:
                    cb.on_epoch_end(self, task, e + 1)
                if bar is not None:
                    bar.update(1)
                if not last and cfg.output.checkpoint_every and (e + 1) % cfg.output.checkpoint_every == 0:
                    self.save()
                if not last and self.stop_signal is not None:
                    self.save()
                    raise StopRequested(rd.path)
                if last:
                    break
            t0 = time.perf_counter()
            self.apply_request(call_hook(self.model, "on_task_end", task))
            entry = self.record(task, st.next_epoch_in_task, loss, full=True)
            # importance passes after the task's evaluation; with gaba_counting `reference` they
            # count, except after the last task (the reference computed them only when a next
            # task started)
            more_tasks = task.index + 1 < len(self.tasks)
            with reference_counting_passes(self.model) if self.reference_counting and more_tasks else nullcontext():
                self.regularizer.on_task_end(self.model, task)
            st.train_seconds += time.perf_counter() - t0
            st.R.append(entry["task_accuracy"])
            st.R_task_aware.append(entry["task_aware_accuracy"])
            st.next_task, st.next_epoch_in_task = task.index + 1, 0
            for cb in self.callbacks:
                cb.on_task_end(self, task, entry)
            if bar is not None:
                bar.close()
            accs = entry["task_aware_accuracy" if self.task_incremental else "task_accuracy"]
            seen_avg = sum(accs[: task.index + 1]) / (task.index + 1)
            self.log(f"after task {task.index + 1}/{len(self.tasks)} [{task.name}]: "
                     + " ".join(f"{a:.3f}" for a in accs) + f"  seen avg {seen_avg:.3f}"
                     + ("  (task-aware: task-incremental)" if self.task_incremental else ""))
            self.save()
            if self.stop_signal is not None and task.index + 1 < len(self.tasks):
                raise StopRequested(rd.path)

    def apply_request(self, request) -> bool:
        """Carry out a model's `TrainingRequest` (models/base.py); True when it ends the task."""
        if request is None:
            return False
        if request.reset_optimizer and self.optimizer is not None:
            self.optimizer = build_optimizer(self.cfg.optim, self.params)
        if request.warning:
            self.warn(request.warning)
        return bool(request.end_task)

    def finish(self) -> dict:
        st, rd = self.state, self.run_dir
        task_incremental = self.task_incremental
        R = np.array(st.R_task_aware if task_incremental else st.R)
        summary = {
            "name": self.cfg.name,
            "stamp": self.cfg.stamp(),
            "config_id": config_id(self.cfg.to_dict()),
            "model": self.cfg.model.name,
            "regularizer": self.cfg.regularizer.name,
            "seed": self.cfg.seed,
            "dataset": self.p.dataset_name,
            "tasks": [list(t.classes) for t in self.tasks],
            **metrics.summarize(R),
            # correct over all test samples (tasks weighted by their test-set size): the reference's val/accuracy
            "final_pooled_accuracy": metrics.pooled_accuracy(R[-1].tolist(), self.evaluator.test_sizes(len(self.tasks))),
            "final_task_aware_accuracy": float(np.mean(st.R_task_aware[-1])),
            "final_task_accuracy": R[-1].tolist(),
            "task_incremental": task_incremental,
            "label_informed": self.takes_labels,
            "epochs": st.epochs_done,
            "steps": st.steps_done,
            "train_seconds": st.train_seconds,
            "seconds_per_epoch": st.train_seconds / max(st.epochs_done, 1),
        }
        last = st.history[-1]
        for key in ("fraction_dead", "fraction_dead_reference_train", "fraction_dead_reference_test",
                    "active_per_input", "gaba_switched"):
            if last.get(key) is not None:
                summary[key] = last[key]
        if task_incremental:
            summary["final_class_incremental_accuracy"] = float(np.mean(st.R[-1]))
        summary["warnings"] = list(st.warnings)
        content = data_content_id(self.cfg.data.source, self.cfg.data.path, self.cfg.data.data_dir)
        if content is not None:
            summary["data_content"] = content  # stands in for data.path in the stamp
        if st.init_from_content is not None:
            summary["init_from_content"] = st.init_from_content  # stands in for init_from's path in tables
        save_checkpoint(rd.model_path, self.checkpoint_payload(full=False))
        rd.write_matrix(R.tolist(), self.task_labels)
        if self.cfg.output.plots:
            self.write_plots()
        if self.provenance is not None:
            summary["provenance"] = self.provenance.close("finished")
        rd.write_summary(summary)
        return summary

    def write_plots(self) -> None:
        from sdmcl import plots

        rd = self.run_dir
        rd.plots_dir.mkdir(exist_ok=True)
        # a task ends at its last evaluation (tasks may end before train.epochs_per_task epochs)
        task_end = {h["task"]: h["epoch"] for h in self.state.history}
        boundaries = [task_end[i] for i in range(len(self.tasks) - 1) if i in task_end]
        # future tasks (evaluated at task ends for the full matrix) are not drawn before they are trained
        hist = [{"epoch": h["epoch"], "task_accuracy": [a if j <= h["task"] else None for j, a in enumerate(h["task_accuracy"])]
                 + [None] * (len(self.tasks) - len(h["task_accuracy"]))} for h in self.state.history]
        run = rd.path.name  # titles name the run: plots copied elsewhere still say whose they are
        plots.plot_task_accuracies(hist, rd.plots_dir / "task_accuracy.png", task_boundaries=boundaries, task_labels=self.task_labels,
                                   title=f"{run}: accuracy of every task over training")
        plots.plot_accuracy_matrix(np.array(self.state.R), rd.plots_dir / "accuracy_matrix.png", task_labels=self.task_labels,
                                   title=f"{run}: accuracy matrix (%)")
        dead = [{"epoch": h["epoch"], "fraction_dead": h["fraction_dead"]} for h in self.state.history if h.get("fraction_dead") is not None]
        if dead:
            plots.plot_dead_neurons(dead, rd.plots_dir / "dead_neurons.png", title=f"{run}: dead neurons over training")


def run(cfg: RunConfig, resume: bool | None = None, progress: bool = True, log: Callable[[str], None] = print,
        prepared: Prepared | None = None, rerun: bool = False, run_dir: str | Path | None = None,
        setup: Callable[[Engine], None] | None = None) -> tuple[RunDir, dict]:
    """Train one config to the end (or resume it). Returns its run directory and summary.

    `resume=None` resumes when the run directory holds a checkpoint, `True` requires one.
    `run_dir` (default: `output.dir/<name>-<stamp>`) is where the run lives, e.g. a run
    directory that was renamed or moved (`cfg` is then its own config.yaml).
    A finished run (summary.json present) is not trained again; its summary is returned,
    with a note when different code made it. `rerun=True` trains from the start whatever is
    there. Raises `RunLocked` when another live process holds the run directory.
    `setup` is called with the engine before it trains (train/stacked.py joins it to a stack).
    Device, threads, output path and memory are checked before anything is written.
    """
    from sdmcl.preflight import check_memory, check_path_lengths, check_run

    rd = RunDir(Path(run_dir) if run_dir is not None else run_dir_for(cfg))
    check_path_lengths(rd.path)
    holder = rd.lock_holder()  # before reading anything: another process may be writing it
    if holder is not None:
        raise RunLocked(rd.path, holder)
    if rd.is_finished() and not rerun:
        return rd, reuse_finished(rd, log)
    if resume and not rd.has_checkpoint():
        raise CheckpointError(f"{rd.path}: no checkpoint to resume from (the run stopped before its first checkpoint); "
                              f"start it again: sdmcl run {rd.config_path if rd.config_path.is_file() else 'CONFIG'}")
    check_run(cfg, rd.path)
    prepared = prepared or prepare(cfg)
    check_memory(cfg, prepared)
    threads = torch.get_num_threads()
    try:
        engine = Engine(prepared, rd, progress=progress, log=log)
        with rd.locked():
            if rd.is_finished() and not rerun:  # another process finished it meanwhile
                return rd, reuse_finished(rd, log)
            if rerun:
                rd.clear_results()
            checkpoint = read_resume_checkpoint(rd, cfg, map_location=prepared.device) if rd.has_checkpoint() else None
            problem = engine.init_from_problem(checkpoint["position"]) if checkpoint is not None else None
            if problem:  # before anything in the run directory is written
                raise CheckpointError(f"{rd.checkpoint_path}: {problem}")
            rd.create(cfg)
            fresh = checkpoint is None
            if fresh:
                call_hook(engine.model, "apply_constraints")
            from sdmcl.provenance import Session

            engine.provenance = Session(rd.path, fresh=fresh)
            try:
                if setup is not None:
                    setup(engine)
                summary = engine.run(resume=not fresh, checkpoint=checkpoint)
            except BaseException as e:
                if engine.provenance.record["status"] == "running":
                    try:
                        engine.provenance.close({StopRequested: "stopped", DivergenceError: "diverged"}.get(type(e), "failed"))
                    except OutputError:
                        pass  # e.g. the disk is full: the original error is the one to report
                raise
    finally:  # the run's process-wide CPU settings end with it (the calling program keeps its own)
        torch.set_num_threads(threads)
        if cfg.train.flush_denormal:
            torch.set_flush_denormal(False)
    return rd, summary


def reuse_finished(rd: RunDir, log: Callable[[str], None] = print) -> dict:
    """The summary of a finished run, with a note when the code that made it differs from this one."""
    from sdmcl.provenance import reuse_note

    summary = read_summary(rd)  # validated: a damaged summary.json is reported by name
    problem = config_edit_problem(rd, summary) or init_from_change_problem(rd, summary)
    if problem:
        raise ConfigError(problem)
    note = reuse_note(rd.path)
    rd.reused = True
    if note:
        log(f"{rd.path}: already finished; its summary is reused, but {note}; add --rerun to train it again")
    else:
        log(f"{rd.path}: already finished; its summary is reused (add --rerun to train it again)")
    return summary


def init_from_change_problem(rd: RunDir, summary: dict) -> str | None:
    """Why a finished run's results are not what its config would give now: the checkpoint
    its `init_from` names was replaced since the run started from it (same path, other
    content). None when unchanged, when the file is gone (nothing to compare: the results
    stand for the content recorded), or for summaries written before this was recorded."""
    started = summary.get("init_from_content")
    if started is None:
        return None
    try:
        cfg = read_run_config(rd)
    except UserError as e:
        return str(e)
    if not cfg.init_from:
        return None
    now = checkpoint_content_id(cfg.init_from)
    if now is None or now == started:
        return None
    return (f"{rd.path}: trained from init_from {cfg.init_from} as it was then (content {started}); that file has changed "
            f"since (now {now}), so these results are not from it. Train the run again from the current file: "
            f"sdmcl run {rd.config_path} --rerun (replaces its results; move the directory away first to keep them)")

"""NISPA (Gurbuz & Dovrolis, ICML 2022): Neuro-Inspired Stability-Plasticity Adaptation for
continual learning in sparse networks, as the authors' code (BurakGurbuz97/NISPA) runs it.

A sparse MLP (default 3 × 400 ReLU units, every layer, the output layer included, keeps a
random `density` of its connections; biases dense). Hidden units are *stable* (they carry
old tasks and are frozen) or *plastic*. Output units of the classes seen so far count as
stable, the inputs as stable. Each task is trained in *phases* of `phase_epochs` epochs,
each with a fresh optimizer; after every epoch the validation accuracy (on a split held out
of the task's training data, `train.validation_fraction`) is measured and the phase keeps
its best epoch. After phase t (counted from 1 in each task):

1. Stop test. a_f(t) = ½(1 + cos(π t / k)) (`a_f_period` = k; 99.7% at t = 1 with k = 30).
   If t > 2 and the phase's best validation accuracy is more than `recovery_threshold`
   percentage points below the best of the accepted phases, or a_f(t) <= `a_f_floor`, the
   task's phases are over: the model reverts to the previous accepted phase (its weights,
   connections and candidate stable units) and the task ends (below).
2. Otherwise the phase is accepted. Candidate stable units: per hidden layer, the units
   with the largest mean activation on the task's training data, most active first, until
   they hold a fraction a_f(t) of the layer's total activation; plus the stable units of
   earlier tasks.
3. Connections from plastic units into candidate stable units (and into the output units
   of seen classes) are dropped, so later changes of plastic units cannot disturb them.
4. Rewiring (`rewire`): as many connections as were dropped in a layer are grown again
   there, first from plastic units left without any outgoing connection (to a random
   plastic unit of the next layer), then at random free positions that end in a plastic
   unit (from any source). New weights are drawn from N(mean, std) of the layer's
   non-zero weights (`grow_init: normal`; `uniform`: U(min, max) of the layer's weights;
   `zero`). Density stays fixed where enough free positions exist (in the output layer
   after the last task there are none: those connections are lost, as in the authors' code).

At the end of a task the candidates become stable units; connections between stable
units, and their biases, are frozen for good (their gradients are zeroed); every other
weight is re-initialised (Kaiming normal, fan-out) and every other bias set to 0
(`reinit_plastic`). Within a task candidate stable units are not yet frozen.

Head: one shared output layer. In training the logits of classes outside the current task
are multiplied by 0 (`mask_training_logits`, the authors' code does so in every setting).
Test: class-incremental (argmax over every class) by default; `multi_head: true` is the
task-incremental setting (the task is given at test time: the run is scored by task-aware
accuracy and marked `task_incremental` in summary.json).

The engine runs the phases through the model hooks `on_task_start` / `on_epoch_end`
(`TrainingRequest`: a fresh optimizer per phase, the task's end when the phases are over);
`train.epochs_per_task` is the most epochs a task may take (the paper's schedule ends at
the latest after 26 phases: 130 epochs with `phase_epochs: 5`). If that cap comes first,
the phases stop where they are (the best epoch of an unfinished phase, its current
candidates made stable; chosen then if no phase has ended yet) and the run warns. All
state lives in buffers, so checkpoints resume exactly.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from sdmcl.errors import ConfigError
from sdmcl.models.base import ModelConfig, TrainingRequest
from sdmcl.registry import register_model


@dataclass
class NISPAConfig(ModelConfig):
    name: str = "nispa"
    hidden_sizes: list[int] = field(default_factory=lambda: [400, 400, 400])  # the authors' MLP
    density: float = 0.2  # fraction of connections present per layer (paper, MLP: 80% pruned)
    phase_epochs: int = 5  # e: epochs per phase
    a_f_period: float = 30.0  # k of the cosine schedule a_f(t) = (1 + cos(pi t / k)) / 2
    a_f_floor: float = 0.05  # phases end once a_f(t) <= this
    recovery_threshold: float = 0.75  # percentage points of validation accuracy a phase may lose
    grow_init: Literal["normal", "uniform", "zero"] = "normal"
    rewire: bool = True  # grow as many connections as were dropped
    reinit_plastic: bool = True  # re-initialise all non-frozen weights at the end of each task
    mask_training_logits: bool = True  # training logits outside the current task's classes × 0
    multi_head: bool = False  # task-incremental scoring (task given at test time)
    mask_seed: int | None = None  # None: drawn from the run seed

    def check(self) -> None:
        if not self.hidden_sizes or any(h < 1 for h in self.hidden_sizes):
            raise ConfigError(f"model.hidden_sizes: needs at least one layer of >= 1 unit, got {self.hidden_sizes}")
        if not 0 < self.density <= 1:
            raise ConfigError(f"model.density: must be in (0, 1], got {self.density}")
        if self.phase_epochs < 1:
            raise ConfigError(f"model.phase_epochs: must be >= 1, got {self.phase_epochs}")
        if not self.a_f_period > 0:
            raise ConfigError(f"model.a_f_period: must be > 0, got {self.a_f_period}")
        if not 0 <= self.a_f_floor < a_f_schedule(1, self.a_f_period):
            raise ConfigError(f"model.a_f_floor: must be in [0, a_f(1) = {a_f_schedule(1, self.a_f_period):.4f}), "
                              f"got {self.a_f_floor}")
        if self.recovery_threshold < 0:
            raise ConfigError(f"model.recovery_threshold: must be >= 0 (percentage points), got {self.recovery_threshold}")

    def check_run(self, run_config) -> None:
        train = run_config.train
        if train.validation_fraction <= 0:
            raise ConfigError("train.validation_fraction: NISPA ends its phases on validation accuracy; "
                              "hold out part of the training data (the paper: 0.1)")
        if run_config.optim.weight_decay != 0:
            raise ConfigError("optim.weight_decay: must be 0 for NISPA (decay would move the frozen weights)")


def a_f_schedule(t: int, period: float) -> float:
    """The stable-activation fraction of phase t (from 1): cosine annealing from ~1 to 0."""
    return 0.5 * (1.0 + math.cos(t * math.pi / period))


def max_phases(period: float, floor: float) -> int:
    """The phase at which a_f first falls to the floor: no task has more phases."""
    t = 1
    while a_f_schedule(t, period) > floor:
        t += 1
    return t


def top_activation_units(act: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask of the most active units, most active first, up to and including the
    unit with which their summed activation reaches `fraction` of the total."""
    order = torch.argsort(act, descending=True, stable=True)
    cum = torch.cumsum(act[order].double(), 0)
    m = min(int((cum < fraction * cum[-1]).sum()) + 1, len(act))
    chosen = torch.zeros(len(act), dtype=torch.bool, device=act.device)
    chosen[order[:m]] = True
    return chosen


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


class NISPA(nn.Module):
    def __init__(self, cfg: NISPAConfig, input_dim: int, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.task_incremental = cfg.multi_head
        sizes = [input_dim] + list(cfg.hidden_sizes) + [num_classes]
        self.num_hidden = len(cfg.hidden_sizes)
        self.mask_seed = cfg.mask_seed if cfg.mask_seed is not None else int(torch.randint(2**62, ()))
        gen = torch.Generator().manual_seed(_seed(self.mask_seed, "init"))
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))  # the last is the head
        for i, layer in enumerate(self.layers):
            shape = layer.weight.shape
            mask = (torch.rand(shape, generator=gen) < cfg.density).float()
            with torch.no_grad():  # the authors' init: Kaiming normal (fan-out) weights, torch's default biases
                layer.weight.copy_(torch.randn(shape, generator=gen) * math.sqrt(2.0 / shape[0]) * mask)
                layer.bias.copy_((torch.rand(shape[0], generator=gen) * 2 - 1) / math.sqrt(shape[1]))
            self.register_buffer(f"mask{i}", mask)
            self.register_buffer(f"freeze{i}", torch.zeros(shape, dtype=torch.bool))  # frozen weights
            self.register_buffer(f"freeze_bias{i}", torch.zeros(shape[0], dtype=torch.bool))
            # snapshots: the best epoch of the running phase, the last accepted phase
            for name in ("best_w", "prev_w"):
                self.register_buffer(f"{name}{i}", torch.zeros(shape))
            for name in ("best_b", "prev_b"):
                self.register_buffer(f"{name}{i}", torch.zeros(shape[0]))
            self.register_buffer(f"prev_mask{i}", torch.zeros(shape))
        # unit sets per layer: hidden layers 0..H-1, then the output layer (index H)
        for i, n in enumerate(sizes[1:]):
            for name in ("stable", "candidate", "candidate_prev"):
                self.register_buffer(f"{name}{i}", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("task_classes", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("seen_classes", torch.zeros(num_classes, dtype=torch.bool))
        # where the running task's phases are
        self.register_buffer("task_index", torch.zeros((), dtype=torch.long))
        self.register_buffer("phase", torch.ones((), dtype=torch.long))
        self.register_buffer("epoch_in_phase", torch.zeros((), dtype=torch.long))
        self.register_buffer("best_phase_acc", torch.zeros((), dtype=torch.float64))  # % (validation)
        self.register_buffer("phase_has_best", torch.zeros((), dtype=torch.bool))
        self.register_buffer("accepted_acc", torch.zeros((), dtype=torch.float64))
        self.register_buffer("has_previous", torch.zeros((), dtype=torch.bool))
        self.register_buffer("finished", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------ per-layer state

    def buf(self, name: str, i: int) -> torch.Tensor:
        return getattr(self, f"{name}{i}")

    def masks(self) -> list[torch.Tensor]:
        return [self.buf("mask", i) for i in range(len(self.layers))]

    def stables(self) -> list[torch.Tensor]:
        """Stable units of each hidden layer, then the output layer's (classes of finished tasks)."""
        return [self.buf("stable", i) for i in range(len(self.layers))]

    def candidates(self) -> list[torch.Tensor]:
        return [self.buf("candidate", i) for i in range(len(self.layers))]

    def source_set(self, sets: list[torch.Tensor], i: int) -> torch.Tensor:
        """The units feeding layer i that belong to `sets` (every input for the first layer)."""
        if i == 0:
            return torch.ones(self.layers[0].in_features, dtype=torch.bool, device=sets[0].device)
        return sets[i - 1]

    def a_f(self, phase: int | None = None) -> float:
        return a_f_schedule(int(self.phase) if phase is None else phase, self.cfg.a_f_period)

    # ------------------------------------------------------------ forward

    def layer_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        acts = []
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
            acts.append(x)
        logits = self.layers[-1](x)
        if self.training and self.cfg.mask_training_logits:
            logits = logits * self.task_classes.to(logits.dtype)
        return logits, acts

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, acts = self.layer_activations(x)
        return logits, torch.cat(acts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_activations(x)[0]

    # ------------------------------------------------------------ engine hooks

    @torch.no_grad()
    def apply_constraints(self) -> None:
        for layer, mask in zip(self.layers, self.masks()):
            layer.weight.mul_(mask)

    def before_step(self) -> None:
        for i, layer in enumerate(self.layers):
            if layer.weight.grad is not None:
                layer.weight.grad.mul_(self.buf("mask", i)).masked_fill_(self.buf("freeze", i), 0.0)
            if layer.bias.grad is not None:
                layer.bias.grad.masked_fill_(self.buf("freeze_bias", i), 0.0)

    @torch.no_grad()
    def on_task_start(self, task) -> TrainingRequest:
        self.task_index.fill_(task.index)
        self.task_classes.zero_()
        self.task_classes[list(task.classes)] = True
        self.seen_classes |= self.task_classes
        for cand, prev, stable in zip(self.candidates(), [self.buf("candidate_prev", i) for i in range(len(self.layers))],
                                      self.stables()):
            cand.copy_(stable)
            prev.copy_(stable)
        self.phase.fill_(1)
        self.epoch_in_phase.zero_()
        self.best_phase_acc.zero_()
        self.phase_has_best.fill_(False)
        self.accepted_acc.zero_()
        self.has_previous.fill_(False)
        self.finished.fill_(False)
        return TrainingRequest(reset_optimizer=True)  # the authors build a new optimizer every phase

    @torch.no_grad()
    def on_epoch_end(self, task, epoch_in_task: int) -> TrainingRequest | None:
        if bool(self.finished):
            return TrainingRequest(end_task=True)
        acc = self.validation_accuracy(task)
        if acc > float(self.best_phase_acc):  # the phase keeps its best epoch
            self.snapshot("best")
            self.best_phase_acc.fill_(acc)
            self.phase_has_best.fill_(True)
        self.epoch_in_phase += 1
        if int(self.epoch_in_phase) < self.cfg.phase_epochs:
            return None
        return self.end_phase(task)

    @torch.no_grad()
    def on_task_end(self, task) -> TrainingRequest | None:
        if bool(self.finished):
            return None
        # train.epochs_per_task ended the task before its phases did: the phases stop where
        # they are (the best epoch of an unfinished phase) and the current candidates become
        # stable; with no phase ended yet, candidates are chosen now at a_f(t), cut and regrown
        if bool(self.phase_has_best):
            self.restore("best")
        if not bool(self.has_previous):
            self.select_candidates(task, self.a_f())
            dropped = self.drop_into_candidates()
            if self.cfg.rewire:
                self.regrow(dropped, torch.Generator().manual_seed(_seed(self.mask_seed, "rewire", int(self.task_index), "cut")))
        self.finish_task(task, revert=False)
        t_max = max_phases(self.cfg.a_f_period, self.cfg.a_f_floor)
        return TrainingRequest(warning=(
            "NISPA: train.epochs_per_task ended tasks before their phases did (they stopped where they were); "
            f"NISPA as published needs up to {t_max} phases × model.phase_epochs = {t_max * self.cfg.phase_epochs} epochs per task"))

    def neuron_stats(self) -> dict:
        return {
            "stable_units": [int(s.sum()) for s in self.stables()[:-1]],
            "candidate_stable_units": [int(c.sum()) for c in self.candidates()[:-1]],
            "connections": [int(m.sum()) for m in self.masks()],
            "nispa_phase": int(self.phase),
        }

    # ------------------------------------------------------------ phases

    @torch.no_grad()
    def validation_accuracy(self, task, chunk: int = 4096) -> float:
        """Accuracy (%) on the task's validation split; task-aware with `multi_head`."""
        if task.val_x is None:
            raise ConfigError("train.validation_fraction: NISPA needs a validation split; set it > 0 (the paper: 0.1)")
        was_training = self.training
        self.eval()
        correct = 0
        for s in range(0, len(task.val_y), chunk):
            logits = self(task.val_x[s : s + chunk])
            if self.cfg.multi_head:
                logits = logits.masked_fill(~self.task_classes, float("-inf"))
            correct += int((logits.argmax(1) == task.val_y[s : s + chunk]).sum())
        self.train(was_training)
        return 100.0 * correct / len(task.val_y)

    @torch.no_grad()
    def snapshot(self, which: str) -> None:
        for i, layer in enumerate(self.layers):
            self.buf(f"{which}_w", i).copy_(layer.weight)
            self.buf(f"{which}_b", i).copy_(layer.bias)
            if which == "prev":
                self.buf("prev_mask", i).copy_(self.buf("mask", i))

    @torch.no_grad()
    def restore(self, which: str) -> None:
        for i, layer in enumerate(self.layers):
            layer.weight.copy_(self.buf(f"{which}_w", i))
            layer.bias.copy_(self.buf(f"{which}_b", i))
            if which == "prev":
                self.buf("mask", i).copy_(self.buf("prev_mask", i))

    @torch.no_grad()
    def end_phase(self, task) -> TrainingRequest:
        if bool(self.phase_has_best):
            self.restore("best")
        acc, t = float(self.best_phase_acc), int(self.phase)
        dropped_accuracy = t > 2 and acc < float(self.accepted_acc) - self.cfg.recovery_threshold
        if dropped_accuracy or self.a_f(t) <= self.cfg.a_f_floor:
            self.finish_task(task)
            return TrainingRequest(end_task=True)
        # accept the phase: remember it, then choose candidates for a_f(t) and rewire
        self.accepted_acc.fill_(max(acc, float(self.accepted_acc)))
        self.snapshot("prev")
        for i in range(len(self.layers)):
            self.buf("candidate_prev", i).copy_(self.buf("candidate", i))
        self.has_previous.fill_(True)
        self.select_candidates(task, self.a_f(t))
        dropped = self.drop_into_candidates()
        if self.cfg.rewire:
            gen = torch.Generator().manual_seed(_seed(self.mask_seed, "rewire", int(self.task_index), t))
            self.regrow(dropped, gen)
        self.phase += 1
        self.epoch_in_phase.zero_()
        self.best_phase_acc.zero_()
        self.phase_has_best.fill_(False)
        return TrainingRequest(reset_optimizer=True)

    @torch.no_grad()
    def mean_activations(self, x: torch.Tensor, chunk: int = 4096) -> list[torch.Tensor]:
        sums = None
        for s in range(0, len(x), chunk):
            acts = [a.sum(0, dtype=torch.float64) for a in self.layer_activations(x[s : s + chunk])[1]]
            sums = acts if sums is None else [a + b for a, b in zip(sums, acts)]
        return [(a / len(x)).float() for a in sums]

    @torch.no_grad()
    def select_candidates(self, task, a_f: float) -> None:
        """Candidate stable units: earlier tasks' stable units plus, per hidden layer, the most
        active units holding a fraction a_f of the activation; output units of seen classes."""
        acts = self.mean_activations(task.train_x)
        for i, act in enumerate(acts):
            self.buf("candidate", i).copy_(self.buf("stable", i) | top_activation_units(act, a_f))
        out = len(self.layers) - 1
        self.buf("candidate", out).copy_(self.buf("stable", out) | self.seen_classes)

    @torch.no_grad()
    def drop_into_candidates(self) -> list[int]:
        """Cut every connection from a non-candidate (plastic) unit into a candidate; returns
        the number cut per layer."""
        cands = self.candidates()
        dropped = []
        for i, layer in enumerate(self.layers):
            mask = self.buf("mask", i)
            cut = mask.bool() & cands[i][:, None] & ~self.source_set(cands, i)[None, :]
            mask[cut] = 0.0
            layer.weight[cut] = 0.0
            dropped.append(int(cut.sum()))
        return dropped

    @torch.no_grad()
    def regrow(self, budget: list[int], gen: torch.Generator) -> None:
        """Grow back `budget[i]` connections in layer i: first one outgoing connection for
        each plastic unit left without any (lowest index first), then random free
        positions that end in a plastic unit."""
        cands = self.candidates()
        budget = list(budget)
        for h in range(self.num_hidden):  # units of hidden layer h send through layer h + 1
            out_layer = h + 1
            plastic_targets = (~cands[out_layer]).nonzero().squeeze(1)
            if budget[out_layer] == 0 or len(plastic_targets) == 0:
                continue
            mask = self.buf("mask", out_layer)
            silent = ((~cands[h]) & (mask.sum(0) == 0)).nonzero().squeeze(1)[: budget[out_layer]]
            if len(silent):
                picks = torch.randint(len(plastic_targets), (len(silent),), generator=gen).to(silent.device)
                mask[plastic_targets[picks], silent] = 1.0  # weight there is 0
                budget[out_layer] -= len(silent)
        for i, layer in enumerate(self.layers):
            if budget[i] == 0:
                continue
            mask = self.buf("mask", i)
            free = ((mask == 0) & ~cands[i][:, None]).flatten().nonzero().squeeze(1)
            if len(free) > budget[i]:
                free = free[torch.randperm(len(free), generator=gen)[: budget[i]].to(free.device)]
            values = self.grow_values(layer.weight, len(free), gen)
            layer.weight.view(-1)[free] = values.to(layer.weight.device)
            mask.view(-1)[free] = 1.0

    def grow_values(self, weight: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
        if self.cfg.grow_init == "zero" or n == 0:
            return torch.zeros(n)
        if self.cfg.grow_init == "uniform":
            lo, hi = float(weight.min()), float(weight.max())
            return lo + (hi - lo) * torch.rand(n, generator=gen)
        present = weight[weight != 0].double()
        if len(present) == 0:
            return torch.zeros(n)
        mean, std = float(present.mean()), float(present.std(correction=0))
        return (mean + std * torch.randn(n, generator=gen, dtype=torch.float64)).float()

    @torch.no_grad()
    def finish_task(self, task, revert: bool = True) -> None:
        """Revert to the last accepted phase (`revert`, if one was accepted), make its
        candidates stable, freeze the connections between stable units and re-initialise
        everything else."""
        n = len(self.layers)
        if revert and bool(self.has_previous):
            self.restore("prev")
            final = [self.buf("candidate_prev", i) for i in range(n)]
        else:
            final = self.candidates()
        for i in range(n):
            self.buf("stable", i).copy_(final[i])
        stables = self.stables()
        for i in range(n):
            self.buf("freeze", i).copy_(stables[i][:, None] & self.source_set(stables, i)[None, :])
            self.buf("freeze_bias", i).copy_(stables[i])
        if self.cfg.reinit_plastic:
            gen = torch.Generator().manual_seed(_seed(self.mask_seed, "reinit", int(self.task_index)))
            for i, layer in enumerate(self.layers):
                shape = layer.weight.shape
                fresh = (torch.randn(shape, generator=gen) * math.sqrt(2.0 / shape[0])).to(layer.weight.device)
                layer.weight.copy_(torch.where(self.buf("freeze", i), layer.weight, fresh) * self.buf("mask", i))
                layer.bias.masked_fill_(~self.buf("freeze_bias", i), 0.0)
        self.finished.fill_(True)


@register_model("nispa", NISPAConfig, "NISPA: sparse MLP, stable units frozen per task, phases with rewiring (Gurbuz & Dovrolis 2022)")
def build(cfg: NISPAConfig, input_dim: int, num_classes: int) -> NISPA:
    return NISPA(cfg, input_dim, num_classes)

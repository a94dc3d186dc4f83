"""Run-time investigations: what the hidden neurons do while a model learns (all off by default).

Two callbacks, configured by the `investigate` section of a run config. They observe the
run and never change what is trained; what they write lives in `<run dir>/investigations/`
and their position is checkpointed, so a resumed run writes the same files as an
uninterrupted one.

`ActivationSnapshots` (`investigate.activations_every: N`): every N epochs and at every task
end, with the current weights and the model in evaluation mode, count for each neuron and
each class how many inputs of that class activate it (activation > `active_threshold`), on
the training data and on the test data of the tasks seen so far. One file per snapshot,
`activations/epoch_NNNNNN.npz`:
    epoch, task                      epochs trained so far, index of the current task
    train_counts, test_counts        int64, classes × neurons
    train_samples, test_samples      int64, samples per class (0 for classes not seen yet)
    train_activation_sum, test_...   float64, neurons: summed activation values
    most_used, least_used            neuron indices, by training counts (`receptive_fields` each)
    most_used_addresses, least_...   their address rows (the hidden layer's input weights)
and one line per snapshot and split in `neurons.csv` (alive fraction, class entropy, active
neurons per input, and `ever_alive`: active in any snapshot so far, the reference's
cumulative "alive neurons").

`UpdateNorms` (`investigate.update_norms: true`): after every optimizer step (or every N-th,
`update_norms_every`), the L2 norm of each address row's change over the step (optimizer and
constraints together), split by whether the neuron was active for any input of the batch.
A neuron inactive in the batch has a zero gradient, so under plain SGD it does not move;
momentum optimizers keep moving it ("stale momentum"). `update_norms.csv` has one row per
measured step; `update_norms_by_silence.csv` one row per epoch, group (active / inactive)
and silence length (steps since the neuron was last active, in powers-of-two bins), with the
mean and largest update. Activity per batch comes from the model's `activity_window` (the
training samples each neuron was active for), so the probe costs one copy of the address
matrix and one norm per measured step, and nothing when off.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import torch

from sdmcl import metrics
from sdmcl.errors import ConfigError, OutputError
from sdmcl.train.callbacks import Callback
from sdmcl.train.checkpoint import atomic_write_bytes

INVESTIGATIONS_DIR = "investigations"


def address_layer(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The hidden layer's input weights: the first linear layer (rows are neuron addresses)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            return m
    return None


def hidden_width(model: torch.nn.Module) -> int | None:
    window = getattr(model, "activity_window", None)
    return None if window is None else int(window.numel())


class AppendLog:
    """A CSV file written row by row whose length is part of the checkpoint: a resumed run
    truncates it to what the checkpoint had seen, then appends again."""

    def __init__(self, path: Path, header: list[str]):
        self.path, self.header = path, header
        self.f = None
        self.bytes = 0

    def open(self, resume_bytes: int | None) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume_bytes is None or not self.path.is_file():
                self.f = open(self.path, "w", newline="")
                csv.writer(self.f).writerow(self.header)
            else:
                os.truncate(self.path, min(resume_bytes, self.path.stat().st_size))
                self.f = open(self.path, "a", newline="")
            self.f.flush()
            self.bytes = self.f.tell()
        except OSError as e:
            raise OutputError(f"{self.path}: could not write ({e.strerror or e}); free disk space or choose another output.dir") from None

    def write(self, rows: list[list]) -> None:
        w = csv.writer(self.f)
        for r in rows:
            w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in r])

    def flush(self) -> int:
        if self.f is not None:
            self.f.flush()
            self.bytes = self.f.tell()
        return self.bytes

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def check_model(engine, what: str, need_addresses: bool = False, need_window: bool = False) -> None:
    model = engine.model
    name = engine.cfg.model.name
    if not hasattr(model, "forward_with_hidden"):
        raise ConfigError(f"investigate.{what}: model {name!r} does not expose its hidden activations; turn it off")
    if need_window and hidden_width(model) is None:
        raise ConfigError(f"investigate.{what}: model {name!r} does not count active neurons in training; turn it off")
    layer = address_layer(model)
    if need_addresses and (layer is None or layer.out_features != engine.cfg.model.neurons):
        raise ConfigError(f"investigate.{what}: model {name!r} has no address matrix of {engine.cfg.model.neurons} rows; turn it off")


# ---------------------------------------------------------------- activation snapshots


class ActivationSnapshots(Callback):
    name = "activation_snapshots"
    HEADER = ["epoch", "task", "split", "samples", "alive_fraction", "ever_alive", "mean_class_entropy",
              "weighted_class_entropy", "active_per_input"]

    def __init__(self, cfg):
        self.every = cfg.activations_every
        self.threshold = cfg.active_threshold
        self.fields = cfg.receptive_fields
        self.ever_active: np.ndarray | None = None  # neurons active in any snapshot so far (training data)
        self.last_epoch = -1
        self.log: AppendLog | None = None
        self._resume_bytes: int | None = None

    def on_run_start(self, engine, resumed: bool) -> None:
        check_model(engine, "activations_every", need_addresses=self.fields > 0)
        self.dir = engine.run_dir.path / INVESTIGATIONS_DIR / "activations"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for p in self.dir.glob("epoch_*.npz"):  # written after the checkpoint (or by a run started over)
                if not resumed or int(p.stem.split("_")[1]) > engine.state.epochs_done:
                    p.unlink()
        except (OSError, ValueError) as e:
            raise OutputError(f"{self.dir}: cannot prepare the snapshot directory ({e}); check output.dir") from None
        self.log = AppendLog(engine.run_dir.path / INVESTIGATIONS_DIR / "neurons.csv", self.HEADER)
        self.log.open(self._resume_bytes if resumed else None)
        if not resumed:
            self.ever_active, self.last_epoch = None, -1

    def on_epoch_end(self, engine, task, epoch_in_task: int) -> None:
        if epoch_in_task % self.every == 0 or epoch_in_task == engine.cfg.train.epochs_per_task:
            self.snapshot(engine, task)

    @torch.no_grad()
    def counts(self, engine, model, batches) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Per-class activation counts (classes × neurons), samples per class, summed
        activations per neuron and active neurons per input, over (inputs, labels) pairs of
        inputs as the model takes them."""
        C = engine.p.num_classes
        n = engine.cfg.model.neurons
        counts = torch.zeros(C, n, dtype=torch.float64, device=engine.device)
        sums = torch.zeros(n, dtype=torch.float64, device=engine.device)
        samples = torch.zeros(C, dtype=torch.int64, device=engine.device)
        bs = engine.cfg.train.eval_batch_size
        kw = engine.forward_kwargs
        for x_all, y_all in batches:
            for s in range(0, len(y_all), bs):
                x, y = x_all[s : s + bs], y_all[s : s + bs]
                _, h = model.forward_with_hidden(x, **kw)
                counts.index_add_(0, y, (h > self.threshold).to(torch.float64))
                sums += h.sum(0, dtype=torch.float64)
                samples += torch.bincount(y, minlength=C)
        per_input = float(counts.sum()) / max(int(samples.sum()), 1)
        return counts.round().long().cpu().numpy(), samples.cpu().numpy(), sums.cpu().numpy(), per_input

    def training_data(self, engine, task):
        """The training inputs of every task seen so far (never augmented), prepared one task
        at a time as the model takes them."""
        for t in engine.tasks[: task.index + 1]:
            yield (engine.prepare_inputs(t.train_x) if engine.prepare_inputs is not None else t.train_x), t.train_y

    def snapshot(self, engine, task) -> None:
        epoch = engine.state.epochs_done
        if epoch == self.last_epoch:
            return
        model = engine.model
        was_training = model.training
        model.eval()
        try:
            train = self.counts(engine, model, self.training_data(engine, task))
            end = int(engine.evaluator.test_offsets[task.index + 1])
            test = self.counts(engine, model, [(engine.evaluator.test_x[:end], engine.evaluator.test_y[:end])])
        finally:
            model.train(was_training)
        per_neuron = train[0].sum(0)
        now_active = per_neuron > 0
        self.ever_active = now_active if self.ever_active is None else (self.ever_active | now_active)
        payload = {
            "epoch": np.int64(epoch), "task": np.int64(task.index),
            "train_counts": train[0], "train_samples": train[1], "train_activation_sum": train[2],
            "test_counts": test[0], "test_samples": test[1], "test_activation_sum": test[2],
            "active_threshold": np.float64(self.threshold),
        }
        if self.fields:
            m = min(self.fields, len(per_neuron))
            order = np.argsort(-per_neuron, kind="stable")  # most used first; ties by neuron index
            most, least = order[:m], order[::-1][:m]
            W = address_layer(model).weight.detach().cpu().numpy()
            payload.update(most_used=most, least_used=least, most_used_addresses=W[most], least_used_addresses=W[least])
        buf = io.BytesIO()
        np.savez_compressed(buf, **payload)
        atomic_write_bytes(self.dir / f"epoch_{epoch:06d}.npz", lambda f: f.write(buf.getvalue()))
        rows = []
        for split, (c, smp, _, per_input) in (("train", train), ("test", test)):
            neuron_class = c.T
            rows.append([epoch, task.index, split, int(smp.sum()), metrics.alive_fraction(c.sum(0)),
                         float(self.ever_active.mean()) if split == "train" else "",
                         metrics.mean_class_entropy(neuron_class), metrics.mean_class_entropy(neuron_class, weighted=True),
                         per_input])
        self.log.write(rows)
        self.log.flush()
        self.last_epoch = epoch

    def state_dict(self) -> dict:
        return {"bytes": self.log.flush() if self.log else 0, "last_epoch": self.last_epoch,
                "ever_active": None if self.ever_active is None else self.ever_active.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self._resume_bytes = state.get("bytes")
        self.last_epoch = state.get("last_epoch", -1)
        ever = state.get("ever_active")
        self.ever_active = None if ever is None else np.asarray(ever, dtype=bool)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


# ---------------------------------------------------------------- update norms


def silence_bin(steps: np.ndarray) -> np.ndarray:
    """Bin index of a silence length: 0 → 0, 1 → 1, 2–3 → 2, 4–7 → 3, … ; never active → -1."""
    s = np.asarray(steps)
    out = np.where(s <= 0, 0, np.floor(np.log2(np.maximum(s, 1))).astype(np.int64) + 1)
    return np.where(s < 0, -1, out)


def silence_bin_range(b: int) -> tuple[int, int]:
    """Inclusive silence lengths of bin `b` (-1: never active so far)."""
    if b < 0:
        return -1, -1
    if b == 0:
        return 0, 0
    return 2 ** (b - 1), 2**b - 1


class UpdateNorms(Callback):
    name = "update_norms"
    # epoch: the epoch (from 1) the step belongs to; task: the task being trained
    HEADER = ["step", "epoch", "task", "active", "inactive", "mean_norm_active", "mean_norm_inactive",
              "max_norm_inactive", "inactive_moved", "mean_norm_reactivated", "reactivated"]
    SILENCE_HEADER = ["epoch", "task", "group", "silence_min", "silence_max", "count", "mean_norm", "max_norm"]
    MOVED = 1e-6  # an inactive row "moved" when its update norm exceeds this (float32 renormalisation noise is ~1e-7)

    def __init__(self, cfg):
        self.every = cfg.update_norms_every
        self.last_active: np.ndarray | None = None  # step at which each neuron was last active; -1 never
        self._resume: dict = {}
        self.logs: tuple[AppendLog, AppendLog] | None = None
        self.bins: dict = {}

    def on_run_start(self, engine, resumed: bool) -> None:
        check_model(engine, "update_norms", need_addresses=True, need_window=True)
        model = engine.model
        self.weight = address_layer(model).weight
        self.window = model.activity_window
        self.prev_window = self.window.detach().clone()
        # the address matrix as the next step will find it; refreshed before each measured step
        self.prev_weight = self.weight.detach().clone()
        self.diff = torch.empty_like(self.prev_weight)
        base = engine.run_dir.path / INVESTIGATIONS_DIR
        self.logs = (AppendLog(base / "update_norms.csv", self.HEADER), AppendLog(base / "update_norms_by_silence.csv", self.SILENCE_HEADER))
        for log, key in zip(self.logs, ("bytes", "silence_bytes")):
            log.open(self._resume.get(key) if resumed else None)
        n = self.window.numel()
        if not resumed or self._resume.get("last_active") is None:
            self.last_active = np.full(n, -1, dtype=np.int64)
        self.bins = {}

    def on_evaluation(self, engine, entry: dict) -> None:
        self.prev_window = self.window.detach().clone()  # the engine has just reset the window

    def on_task_start(self, engine, task) -> None:
        # task-end work (e.g. a regularizer's importance pass in training mode) may have
        # counted activity outside any step
        self.prev_window = self.window.detach().clone()

    def after_step(self, engine) -> None:
        step = engine.state.steps_done  # index of the step just taken
        window = self.window.detach()
        active_t = (window - self.prev_window) > 0
        self.prev_window.copy_(window)
        active = active_t.cpu().numpy()
        measured = step % self.every == 0
        if measured:
            W = self.weight.detach()
            norms = torch.linalg.vector_norm(torch.sub(W, self.prev_weight, out=self.diff), dim=1).cpu().numpy().astype(np.float64)
            silence = np.where(self.last_active < 0, -1, step - 1 - self.last_active)  # steps silent before this one
            self.record(engine, step, active, norms, silence)
        self.last_active[active] = step
        if (step + 1) % self.every == 0:
            self.prev_weight.copy_(self.weight.detach())

    def record(self, engine, step: int, active: np.ndarray, norms: np.ndarray, silence: np.ndarray) -> None:
        inactive = ~active
        reactivated = active & (silence >= 1)  # active again after at least one silent step
        na, ni, nr = int(active.sum()), int(inactive.sum()), int(reactivated.sum())
        mean = lambda m: float(norms[m].mean()) if m.any() else ""  # noqa: E731
        self.logs[0].write([[step, engine.state.epochs_done + 1, engine.state.next_task, na, ni, mean(active), mean(inactive),
                             float(norms[inactive].max()) if ni else "", int((norms[inactive] > self.MOVED).sum()),
                             mean(reactivated), nr]])
        # per epoch, by group and silence bin: count, summed norm, largest norm (bin b at index b + 1,
        # index 0 = never active). Inactive neurons are silent for silence + 1 steps counting this one.
        for group, mask, length in (("active", active, silence), ("inactive", inactive, np.where(silence < 0, -1, silence + 1))):
            if not mask.any():
                continue
            b = silence_bin(length[mask]) + 1
            v = norms[mask]
            acc = self.bins.get(group)
            size = max(int(b.max()) + 1, 0 if acc is None else len(acc[0]))
            if acc is None or len(acc[0]) < size:
                grown = [np.zeros(size, np.int64), np.zeros(size), np.zeros(size)]
                if acc is not None:
                    for new, old in zip(grown, acc):
                        new[: len(old)] = old
                acc = self.bins[group] = grown
            acc[0] += np.bincount(b, minlength=size)
            acc[1] += np.bincount(b, weights=v, minlength=size)
            np.maximum.at(acc[2], b, v)

    def on_epoch_end(self, engine, task, epoch_in_task: int) -> None:
        rows = []
        for group in ("active", "inactive"):
            if group not in self.bins:
                continue
            counts, totals, maxima = self.bins[group]
            for i in np.flatnonzero(counts):
                lo, hi = silence_bin_range(int(i) - 1)
                rows.append([engine.state.epochs_done, task.index, group, lo, hi, int(counts[i]), float(totals[i] / counts[i]), float(maxima[i])])
        self.logs[1].write(rows)
        self.bins = {}
        for log in self.logs:
            log.flush()

    def state_dict(self) -> dict:
        if self.logs is None:
            return {}
        return {"bytes": self.logs[0].flush(), "silence_bytes": self.logs[1].flush(),
                "last_active": self.last_active.tolist() if self.last_active is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)
        if state.get("last_active") is not None:
            self.last_active = np.asarray(state["last_active"], dtype=np.int64)

    def close(self) -> None:
        if self.logs is not None:
            for log in self.logs:
                log.close()


def build_investigations(cfg) -> list[Callback]:
    """The investigation callbacks that an `investigate` config section turns on."""
    out: list[Callback] = []
    if cfg.activations_every > 0:
        out.append(ActivationSnapshots(cfg))
    if cfg.update_norms:
        out.append(UpdateNorms(cfg))
    return out

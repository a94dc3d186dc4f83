"""Many runs as one model: S runs of the same shapes trained at once, epoch by epoch.

Every run stays an ordinary run: its own `Engine`, run directory, data order, GABA
counters, regularizer state, evaluation, metrics, checkpoints and resume, through the same
code as a run trained alone. Only its training epochs are taken over: the runs of a
`Lockstep` group each run their engine loop in a thread, and at every training epoch they
meet; the last to arrive trains the epoch of all of them as one stacked model
(models/sdmlp_stack.py: batched products over the S runs) and each run continues with its
own loss. One thread runs at a time (a baton), so a stack uses the threads of one run.

What may differ between the runs of a stack: seeds, class orders, the learning rate, the
clip norm, k, the GABA threshold T, and the regularizer's values (λ, β, ...); what must be
equal: everything that sets shapes or the step sequence (model shape, data, tasks and
their sizes, epochs, batch size). `stack_problem` says why an engine cannot join
(then it trains alone in its thread, as usual). Supported: the SDMLP (GABA switch, exact
Top-K, bias-free) with plain SGD and no regularizer or a quadratic one without per-step
hooks (EWC, MAS, L2).

Per-run results equal those of the runs trained one by one up to float summation order
(tests/test_stacked.py). On a GPU, where one small MLP leaves the device idle, a stack is
the way to fill it; on a CPU the work is the same as running the runs one after another,
and only the per-operation overhead is shared (docs/speed.md has the measurements).
"""

from __future__ import annotations

import math
import threading
from typing import Callable

import torch

from sdmcl.models.sdmlp_stack import StackedSDMLP, stack_problem as model_problem
from sdmcl.train.engine import Engine, call_hook, derived_seed, seed_everything


def engine_problem(engine: Engine) -> str | None:
    """Why this run cannot train in a stack (None when it can)."""
    if not engine.uses_gradients or engine.optimizer is None:
        return "a model trained without gradients"
    if not engine.plain_sgd:
        return f"optimizer {engine.cfg.optim.name!r} (stacks train with plain SGD)"
    if engine.reg_active and not (engine.quadratic is not None and engine.row_sparse):
        return f"regularizer {engine.cfg.regularizer.name!r} has per-step hooks"
    if engine.augment is not None or engine.schedule is not None or engine.amp is not None:
        return "augmentation, a learning-rate schedule or mixed precision"
    if engine.step_callbacks:
        return "callbacks that observe every step"
    if engine.fault_on:
        return "fault injection"
    return model_problem([engine.model])


class Lockstep:
    """A group of runs whose training epochs are trained together.

    Use: start one thread per run, each calling `thread_body(fn)` where `fn` trains the run
    (e.g. `launch.train_one(..., setup=group.join)`); `join(engine)` is called by the run
    with its engine before its loop starts."""

    def __init__(self, expected: int, sparse_rows: bool | None = None):
        self.cond = threading.Condition()
        self.live = expected  # threads that may still take part in a round
        self.members: dict[int, Engine] = {}  # thread id → engine
        self.pending: dict[int, tuple] = {}  # thread id → (task, epoch)
        self.results: dict[int, object] = {}
        self.alone: set[int] = set()  # threads whose run trains by itself
        self.stop_signal: int | None = None
        self.sparse_rows = sparse_rows
        self.rounds = 0
        self.stacked_sizes: list[int] = []  # runs per stacked epoch (for the log and the tests)

    # ------------------------------------------------------------ membership

    def thread_body(self, fn: Callable[[], object]):
        """Run `fn` holding the baton; leave the group when it ends, however it ends."""
        with self.cond:
            try:
                return fn()
            finally:
                tid = threading.get_ident()
                self.members.pop(tid, None)
                if tid not in self.alone:
                    self.live -= 1
                self._maybe_round()

    def join(self, engine: Engine) -> None:
        """Called by a run with its engine: it trains in the stack if it can."""
        problem = engine_problem(engine)
        if problem is not None:
            engine.log(f"{engine.run_dir.path}: trains alone, not in the stack ({problem})")
            self.alone.add(threading.get_ident())
            self.live -= 1
            self._maybe_round()
            return
        self.members[threading.get_ident()] = engine
        engine.epoch_trainer = self.train_epoch
        engine.stop_signal = self.stop_signal

    # ------------------------------------------------------------ rounds

    def train_epoch(self, engine: Engine, task, epoch_in_task: int) -> float:
        tid = threading.get_ident()
        self.pending[tid] = (task, epoch_in_task)
        self._maybe_round()
        self.cond.wait_for(lambda: tid in self.results)
        result = self.results.pop(tid)
        if isinstance(result, BaseException):
            raise result
        return result

    def _maybe_round(self) -> None:
        """Train the pending epochs once every live member has arrived (threads that have not
        yet joined, or have left, are waited for or dropped)."""
        if not self.pending or len(self.pending) < self.live:
            return
        pending, self.pending = self.pending, {}
        groups: dict[tuple, list[int]] = {}
        for tid, (task, epoch) in pending.items():
            engine = self.members[tid]
            key = (task.index, epoch, len(task.train_y), engine.cfg.train.batch_size)
            groups.setdefault(key, []).append(tid)
        for tids in groups.values():
            engines = [self.members[t] for t in tids]
            jobs = [(e, pending[t][0], pending[t][1]) for e, t in zip(engines, tids)]
            try:
                out = train_stacked_epoch(jobs, self.sparse_rows)
            except BaseException as e:  # a bug or an interrupt: every run of the round gets it
                out = [e] * len(jobs)
            self.stacked_sizes.append(len(jobs))
            for t, r in zip(tids, out):
                self.results[t] = r
        self.rounds += 1
        self.cond.notify_all()


def run_in_lockstep(fns: list[Callable[[Lockstep], object]], sparse_rows: bool | None = None) -> list:
    """Run each `fn(group)` in its own thread of one `Lockstep` group; returns their results
    (an exception a thread raised is returned in its place)."""
    import signal

    group = Lockstep(len(fns), sparse_rows)
    results: list = [None] * len(fns)

    def on_signal(signum, frame):  # every run of the stack checkpoints and stops after its epoch
        group.stop_signal = signum
        for engine in list(group.members.values()):
            engine.stop_signal = signum

    old_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, on_signal)

    def body(i):
        try:
            results[i] = group.thread_body(lambda: fns[i](group))
        except BaseException as e:
            results[i] = e

    threads = [threading.Thread(target=body, args=(i,), name=f"sdmcl-stack-{i}") for i in range(len(fns))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    return results


# ---------------------------------------------------------------- the stacked epoch


def _stack_terms(engines: list[Engine], model: StackedSDMLP):
    """The closed-form penalty terms of every run as stacked tensors (None: no penalty):
    per parameter (W₁, W₂) the stacked A' and b' of regularizers/base.QuadraticPenalty."""
    quads = []
    for e in engines:
        q = e.quadratic
        active = q is not None and q.update(getattr(e.regularizer.cfg, "lam", 1.0), e.regularizer.quadratic_terms())
        quads.append(q if active else None)
    if all(q is None for q in quads):
        return None
    shapes = (model.w1.shape[1:], model.w2.shape[1:])
    terms = []
    for i, shape in enumerate(shapes):
        a, b, m = [], [], []
        for q in quads:
            if q is None:
                zero = torch.zeros(shape, device=model.device)
                a.append(zero)
                b.append(zero)
                m.append(zero)
            else:
                qa = q._a[i]
                a.append(qa if isinstance(qa, torch.Tensor) else torch.full(shape, qa, device=model.device))
                b.append(q._b[i])
                m.append(q._m[i])
        terms.append((torch.stack(a), torch.stack(b), torch.stack(m)))
    consts = [q._const if q is not None else 0.0 for q in quads]
    return terms, consts


def train_stacked_epoch(jobs: list[tuple[Engine, object, int]], sparse_rows: bool | None = None) -> list:
    """One training epoch of every (engine, task, epoch_in_task) as one stacked model; returns
    each run's mean training loss, or the DivergenceError its run would have raised."""
    engines = [e for e, _, _ in jobs]
    for engine, task, epoch in jobs:  # what Engine.train_epoch does before its steps
        seed_everything(derived_seed(engine.cfg.seed, "epoch", task.index, epoch))
        call_hook(engine.model, "on_epoch_start", engine.epoch_offset + engine.state.epochs_done)
        engine.model.train()
    model = StackedSDMLP([e.model for e in engines], sparse_rows)
    model.load()
    device = model.device
    s_runs = len(jobs)
    x_all = [e.train_inputs(t) for e, t, _ in jobs]
    y_all = [t.train_y for _, t, _ in jobs]
    n = len(y_all[0])
    bs = engines[0].cfg.train.batch_size
    perms = []
    for engine, task, epoch in jobs:
        gen = torch.Generator(device=device).manual_seed(derived_seed(engine.cfg.seed, "order", task.index, epoch))
        perms.append(torch.randperm(n, generator=gen, device=device))
    lrs = [e.optimizer.param_groups[0]["lr"] for e in engines]
    clips = [e.cfg.optim.grad_clip for e in engines]
    penalty = _stack_terms(engines, model)
    on_cpu = device.type == "cpu"
    loss_totals = [0.0] * s_runs if on_cpu else torch.zeros(s_runs, dtype=torch.float64, device=device)
    failed: list[BaseException | None] = [None] * s_runs
    lr_t = torch.tensor(lrs, dtype=torch.float64, device=device)
    clip_t = torch.tensor([math.inf if c is None else c for c in clips], dtype=torch.float64, device=device)
    steps = 0
    for step, start in enumerate(range(0, n, bs)):
        idx = [p[start : start + bs] for p in perms]
        x = torch.stack([xa.index_select(0, i) for xa, i in zip(x_all, idx)])
        y = torch.stack([ya.index_select(0, i) for ya, i in zip(y_all, idx)])
        losses, g1, g2, counts = model.forward_backward(x, y)
        values = None
        if penalty is not None:  # closed-form penalty gradients, added to the CE gradients
            (a1, b1, m1), (a2, b2, m2) = penalty[0]
            u1 = torch.addcmul(b1, a1, model.w1)
            u2 = torch.addcmul(b2, a2, model.w2)
            # ½ u·(θ − m) + c per run (regularizers/base.QuadraticPenalty)
            values = 0.5 * ((u1 * (model.w1 - m1)).sum((1, 2), dtype=torch.float64)
                            + (u2 * (model.w2 - m2)).sum((1, 2), dtype=torch.float64))
            values += torch.tensor(penalty[1], dtype=torch.float64, device=device)
            if isinstance(g1, torch.Tensor):
                u1 += g1
            else:
                for s, (rows, vals) in enumerate(g1):
                    if rows is None:
                        u1[s] += vals
                    else:
                        u1[s].index_add_(0, rows, vals)
            g1, g2 = u1, u2.add_(g2)
        batch = len(idx[0])
        if on_cpu:
            lv = losses.tolist()
            pv = values.tolist() if values is not None else [0.0] * s_runs
            for s in range(s_runs):
                total = lv[s] + pv[s]
                if failed[s] is None and not math.isfinite(total):
                    failed[s] = _divergence(engines[s], jobs[s][1], jobs[s][2], step, "the loss")
                loss_totals[s] += total * batch
        else:
            loss_totals += (losses.double() + (values if values is not None else 0.0)) * batch
        # clip each run's gradient norm, then p −= lr·c·g (as optim.plain_sgd_step_ does)
        if isinstance(g1, torch.Tensor):
            squares = (g1 * g1).sum((1, 2), dtype=torch.float64)
        else:
            squares = torch.stack([torch.dot(v.reshape(-1), v.reshape(-1)) for _, v in g1]).double()
        squares = squares + (g2 * g2).sum((1, 2), dtype=torch.float64)
        scale = (lr_t * (clip_t / (squares.sqrt() + 1e-6)).clamp_(max=1.0)).float()
        if isinstance(g1, torch.Tensor):
            model.w1.addcmul_(g1, scale[:, None, None], value=-1.0)
        else:
            sc = scale.tolist()
            n_rows = model.w1.shape[1:]
            for s, (rows, vals) in enumerate(g1):
                if rows is not None:  # the row-sparse step of a run trained alone (a fused sparse add)
                    vals = torch.sparse_coo_tensor(rows[None], vals, n_rows, is_coalesced=True, check_invariants=False)
                model.w1[s].add_(vals, alpha=-sc[s])
        model.w2.addcmul_(g2, scale[:, None, None], value=-1.0)
        # the rows a step changed: the active ones, or all (a penalty; a run whose rows were
        # mostly active took the dense product, as the SDMLP does alone)
        changed = None
        if penalty is None:
            changed = counts > 0
            changed[changed.sum(1) * 4 > changed.shape[1] * 3] = True
        model.apply_constraints(changed)
        steps += 1
    model.store()
    out: list = []
    totals = loss_totals if on_cpu else loss_totals.tolist()
    for s, engine in enumerate(engines):
        engine.state.steps_done += steps
        if failed[s] is not None:
            out.append(failed[s])
            continue
        mean = float(totals[s]) / n
        if not math.isfinite(mean):
            out.append(_divergence(engine, jobs[s][1], jobs[s][2], None, "the loss"))
        elif not all(math.isfinite(float(p.detach().sum())) for p in engine.params):
            out.append(_divergence(engine, jobs[s][1], jobs[s][2], None, "a weight"))
        else:
            out.append(mean)
    return out


def _divergence(engine: Engine, task, epoch: int, step, what: str) -> BaseException:
    try:
        engine.diverged(task, epoch, step, what)
    except BaseException as e:  # the engine's own message
        return e
    raise AssertionError("Engine.diverged returned")

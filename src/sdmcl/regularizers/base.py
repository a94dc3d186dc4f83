"""The small interface every continual-learning regularizer implements.

The engine calls, per task: `on_task_start(model, task)`; per step: the loss gets
`+ penalty(model)`, then after backward `before_step(model, logits, y)` (before clipping
and the optimizer step), after the optimizer step and the model constraints
`after_step(model)`; at the end of a task `on_task_end(model, task)`. All state the future
of a run depends on is returned by `state_dict()` and restored by `load_state_dict()`.

Quadratic penalties. EWC (per task or online), MAS, SI and L2 all penalise
λ Σ_t Σ Ω_t ⊙ (θ − θ_t)², with importances Ω_t and anchors θ_t fixed between task ends.
Such a regularizer says so by returning its terms from `quadratic_terms()`; the engine then
does not build the penalty in autograd but adds its closed-form gradient

    ∂/∂θ λ Σ_t Ω_t (θ − θ_t)² = 2λ (A ⊙ θ − b),   A = Σ_t Ω_t,  b = Σ_t Ω_t ⊙ θ_t,

to the gradients after backward (`QuadraticPenalty`): one fused pass per parameter and
step whatever the number of past tasks, with A and b rebuilt only when the terms change.
`penalty(model)` stays the autograd form of the same penalty (used by regularizers that
are not quadratic, and by the tests as the reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class RegularizerConfig:
    name: str = "none"

    def check(self) -> None:
        """Raise `ConfigError` naming the key when a value is impossible."""


def check_fields(cfg, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ("lam",), at_least_one: tuple[str, ...] = ()) -> None:
    """Shared range checks of regularizer configs; the message names the dotted key."""
    from sdmcl.errors import ConfigError

    for key in non_negative:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"regularizer.{key}: must be >= 0, got {getattr(cfg, key)}")
    for key in positive:
        if not getattr(cfg, key) > 0:
            raise ConfigError(f"regularizer.{key}: must be > 0, got {getattr(cfg, key)}")
    for key in at_least_one:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"regularizer.{key}: must be >= 1, got {getattr(cfg, key)}")


class Regularizer:
    # True: the engine keeps the training graph alive after backward (for `before_step`)
    needs_logits_graph = False
    cfg: RegularizerConfig

    def __init__(self, cfg: RegularizerConfig, model: torch.nn.Module):
        self.cfg = cfg

    def on_task_start(self, model: torch.nn.Module, task) -> None:
        pass

    def penalty(self, model: torch.nn.Module) -> torch.Tensor | float:
        """The penalty added to the loss, in autograd. By default the quadratic penalty of
        `quadratic_terms()` built term by term (the engine uses its closed form instead)."""
        terms = self.quadratic_terms()
        if not terms:
            return 0.0
        params = [p for _, p in trainable(model)]
        return self.cfg.lam * sum(quadratic_penalty(params, anchors, importance) for importance, anchors in terms)

    def quadratic_terms(self) -> list[tuple[list, list[torch.Tensor]]] | None:
        """The penalty as λ Σ_terms Σ Ω ⊙ (θ − θ*)² (λ = `cfg.lam`): a list of
        (importances Ω, anchors θ*), each a list with one entry per parameter of
        `trainable(model)` (an importance may be a number, e.g. 1 for L2). [] while there is
        no penalty yet; None when the penalty is not of this form (then `penalty()` is built
        in autograd every step)."""
        return []

    def closed_form(self) -> bool:
        """True when the engine may add the closed-form gradient of `quadratic_terms()`
        instead of building `penalty()` in autograd (a subclass that overrides `penalty`
        keeps its own)."""
        return type(self).penalty is Regularizer.penalty and self.quadratic_terms() is not None

    def before_step(self, model: torch.nn.Module, logits: torch.Tensor, y: torch.Tensor) -> None:
        pass

    def after_step(self, model: torch.nn.Module) -> None:
        pass

    def on_task_end(self, model: torch.nn.Module, task) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters a regularizer anchors, by name (stable across checkpoints)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for _, p in trainable(model)]


def quadratic_penalty(params: list[torch.Tensor], anchors: list[torch.Tensor], importance: list) -> torch.Tensor:
    """Σ Ω (θ − θ*)² over all parameter tensors."""
    total = params[0].new_zeros(())
    for p, a, w in zip(params, anchors, importance):
        total = total + (w * (p - a) ** 2).sum()
    return total


class QuadraticPenalty:
    """The closed form of λ Σ_t Σ Ω_t ⊙ (θ − θ_t)² for a regularizer's `quadratic_terms()`.

    Kept per parameter: A' = 2λ Σ_t Ω_t and b' = −2λ Σ_t Ω_t ⊙ θ_t (so the gradient is
    u = A' ⊙ θ + b', one `addcmul`), the importance-weighted anchor m = Σ_t Ω_t θ_t / Σ_t Ω_t
    and the spread of the anchors around it, c = λ Σ (Σ_t Ω_t θ_t² − A m²) (0 with one
    term; A = Σ_t Ω_t). They are rebuilt when the terms change (a task ended, a checkpoint was loaded):
    that is noticed from the identity and in-place version of every term tensor, so no
    regularizer has to announce it. The gradient equals autograd's 2λ Σ_t Ω_t (θ − θ_t) up
    to float summation order. The value, for the reported loss, is
    λ Σ A (θ − m)² + c = ½ u·(θ − m) + c: two dot products and no extra pass over the terms,
    and no cancellation of large numbers near the anchors."""

    def __init__(self):
        self._key: tuple | None = None
        self.active = False
        self._a: list = []
        self._b: list = []
        self._m: list = []
        self._const = 0.0
        self._buffers: list[torch.Tensor | None] = []
        self._held: list = []  # the term tensors of the key: held so that their ids stay theirs

    @staticmethod
    def _key_of(lam: float, terms) -> tuple:
        parts = [lam, len(terms)]
        for importance, anchors in terms:
            for t in (*importance, *anchors):
                parts.append((id(t), t._version) if isinstance(t, torch.Tensor) else float(t))
        return tuple(parts)

    @torch.no_grad()
    def update(self, lam: float, terms) -> bool:
        """Rebuild A', b' if the terms changed. Returns whether there is a penalty."""
        key = self._key_of(lam, terms)
        if key == self._key:
            return self.active
        self._key = key
        self._held = [t for importance, anchors in terms for t in (*importance, *anchors)]
        self.active = bool(terms) and lam != 0
        self._a, self._b, self._m, self._const = [], [], [], 0.0
        self._buffers = []
        if not self.active:
            return False
        const = 0.0
        for i in range(len(terms[0][1])):
            a = b = None
            for importance, anchors in terms:
                w, anchor = importance[i], anchors[i]
                a = w if a is None else a + w
                wa = w * anchor
                b = wa if b is None else b + wa
                const += float((wa.double() * anchor.double()).sum())
            if isinstance(a, torch.Tensor):
                # (SI's importances can be negative; where Σ Ω = 0 every Ω is 0 in practice, and b too)
                nonzero = a != 0
                m = torch.where(nonzero, b / torch.where(nonzero, a, torch.ones_like(a)), torch.zeros_like(b))
                const -= float((a.double() * m.double() ** 2).sum())
            else:
                m = b / a if a else torch.zeros_like(b)
                const -= float(a) * float((m.double() ** 2).sum())
            if isinstance(a, torch.Tensor):
                self._a.append(2 * lam * a)
            elif abs(2 * lam * a) <= torch.finfo(b.dtype).max:
                self._a.append(float(2 * lam * a))
            else:  # torch refuses a scalar beyond the tensors' range; as a tensor it is inf, and the run diverges by name
                self._a.append(torch.full_like(b, math.inf if 2 * lam * a > 0 else -math.inf))
            self._b.append(b.mul(-2 * lam))
            self._m.append(m)
            self._buffers.append(None)
        self._const = lam * const
        return True

    @torch.no_grad()
    def add_gradients(self, params: list[torch.Tensor], with_value: bool = True) -> torch.Tensor | float:
        """Add the penalty's gradient to every parameter's `.grad` (dense, or a sparse COO
        gradient made dense) and return the penalty value (0 when `with_value` is false).
        The gradient of a parameter lives in a buffer reused at the next call: gradients are
        consumed by the step before then."""
        value = 0.0
        for i, (p, a, nb) in enumerate(zip(params, self._a, self._b)):
            u = self._buffers[i]
            if u is None or u.shape != p.shape:
                u = self._buffers[i] = torch.empty_like(p)
            if isinstance(a, torch.Tensor):
                torch.addcmul(nb, a, p, out=u)
            else:
                torch.add(nb, p, alpha=a, out=u)
            if with_value:
                flat_u = u.reshape(-1)
                value = value + 0.5 * (torch.dot(flat_u, p.detach().reshape(-1)) - torch.dot(flat_u, self._m[i].reshape(-1)))
            g = p.grad
            if g is None:
                p.grad = u
            elif g.is_sparse:  # the SDMLP's row-sparse address gradient: its rows added in
                g = g.coalesce() if g.sparse_dim() > 1 else g
                idx, vals = g._indices(), g._values()
                if g.sparse_dim() == 1:
                    u.index_add_(0, idx[0], vals)
                else:
                    u.index_put_(tuple(idx), vals, accumulate=True)
                p.grad = u
            else:
                g.add_(u)
        if with_value:
            value = value + self._const
        return value


def task_batches(task, batches: int, batch_size: int, seed_parts: tuple) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `batches` minibatches of a seeded permutation of the task's training data
    (deterministic: seeded from `seed_parts`, so a resumed run draws the same ones)."""
    import hashlib

    seed = int.from_bytes(hashlib.sha256(":".join(map(str, seed_parts)).encode()).digest()[:8], "little") >> 1
    gen = torch.Generator(device=task.train_x.device).manual_seed(seed)
    perm = torch.randperm(len(task.train_y), generator=gen, device=task.train_x.device)
    out = []
    for b in range(batches):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        if len(idx) == 0:
            break
        out.append((task.train_x.index_select(0, idx), task.train_y.index_select(0, idx)))
    return out


class EvalMode:
    """Context: model in eval mode (no dropout, no GABA counting), previous mode restored."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)

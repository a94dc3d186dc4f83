"""S SDMLPs of one shape as one batched model (the math of a stacked training step).

Each of the S models keeps its own weights, GABA counters and activity windows; this
class copies them into stacked tensors (W₁: S × n × d, W₂: S × C × n, counters: S × n)
at the start of an epoch (`load`), runs the steps on the stack with batched products
(`torch.bmm`), and copies them back at its end (`store`), so evaluation, checkpoints and
everything else keep working on the S ordinary models. Values that leave the shapes
unchanged may differ between the models: k and the GABA threshold T here, the learning
rate, λ and β in the trainer (train/stacked.py).

The step is the SDMLP's (models/sdmlp.py: `SDMLPFunction` and `apply_constraints`), run by
run equal up to float summation order: h = x·W₁ᵀ, r = relu(h), a = relu(r − g ⊙ v_{k+1}),
logits = a·W₂ᵀ; the hand-written backward; the constraints (clamp ≥ 0, unit address
rows, rows no step changed divided by exactly 1). The address gradient of a run is
multiplied only over the rows active in its batch (`sparse_rows`, the CPU default), or
as one dense batched product (the GPU default: one kernel for all runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdmcl.models.sdmlp import SDMLP


def stack_problem(models: list) -> str | None:
    """Why these models cannot be stacked (None when they can)."""
    first = models[0]
    for m in models:
        if not isinstance(m, SDMLP):
            return f"model {type(m).__name__} is not an SDMLP"
        c = m.cfg
        if c.bias or c.output_bias:
            return "an SDMLP with biases"
        if c.k_approach != "gaba_switch":
            return f"k approach {c.k_approach!r} (stacking supports gaba_switch)"
        if c.topk_search != "exact":
            return "the approximate Top-K (each run has its own candidates)"
        if getattr(c, "gaba_counting", "training") != "training":
            return "gaba_counting other than 'training'"
        if (m.addresses.weight.shape != first.addresses.weight.shape or m.values.weight.shape != first.values.weight.shape
                or c.l2_norm != first.cfg.l2_norm or c.positive_weights != first.cfg.positive_weights):
            return "models of different shapes or constraints"
    return None


class StackedSDMLP:
    def __init__(self, models: list[SDMLP], sparse_rows: bool | None = None):
        problem = stack_problem(models)
        if problem:
            raise ValueError(f"cannot stack these models: {problem}")
        self.models = models
        first = models[0]
        self.device = first.addresses.weight.device
        self.positive, self.l2 = first.cfg.positive_weights, first.cfg.l2_norm
        self.k = torch.tensor([m.cfg.k for m in models], device=self.device)
        self.k_max = int(self.k.max())
        # 2/T as the float32 each model multiplies its counters by (gaba_response)
        self.gaba_scale = torch.tensor([2.0 / m.cfg.gaba_switch_activations for m in models], dtype=torch.float32,
                                       device=self.device)[:, None]
        self.sparse_rows = self.device.type == "cpu" if sparse_rows is None else sparse_rows
        self.w1 = self.w2 = self.counters = None

    def __len__(self) -> int:
        return len(self.models)

    @torch.no_grad()
    def load(self) -> None:
        """Copy the models' weights and counters into the stack."""
        self.w1 = torch.stack([m.addresses.weight.detach() for m in self.models])
        self.w2 = torch.stack([m.values.weight.detach() for m in self.models])
        self.counters = torch.stack([m.topk.gaba_counters for m in self.models])
        n = self.w1.shape[1]
        self.activity = torch.zeros(len(self), n, dtype=torch.int64, device=self.device)
        self.activation = torch.zeros(len(self), n, dtype=torch.float64, device=self.device)

    @torch.no_grad()
    def store(self) -> None:
        """Copy the stack back into the models (weights, counters, activity windows)."""
        for s, m in enumerate(self.models):
            m.addresses.weight.copy_(self.w1[s])
            m.values.weight.copy_(self.w2[s])
            m.topk.gaba_counters.copy_(self.counters[s])
            m.activity_window += self.activity[s]
            window = getattr(m, "activation_window", None)
            if window is not None:
                window += self.activation[s]

    @torch.no_grad()
    def forward_backward(self, x: torch.Tensor, y: torch.Tensor):
        """One training forward and backward of every run on its own batch: `x` S × B × d
        (prepared inputs), `y` S × B. Returns the per-run mean cross-entropy (S), the address
        gradients (per run `(rows, values)` of the active rows, or one dense S × n × d
        tensor), the value gradients (S × C × n) and the active counts (S × n); the GABA
        counters and activity windows count the batch, as in training mode."""
        s_runs, b, _ = x.shape
        h = torch.bmm(x, self.w1.transpose(1, 2))  # S × B × n
        r = h.relu_()
        top = torch.topk(r, self.k_max + 1, dim=2, sorted=True).values
        v = top.gather(2, self.k.view(-1, 1, 1).expand(s_runs, b, 1))  # each run's (k+1)-th value
        g = (self.counters.to(torch.float32) * self.gaba_scale - 1.0).clamp_(-1.0, 1.0)
        a = torch.addcmul(r, v, g[:, None, :], value=-1.0).relu_()
        counts = a.sign().sum(1).long()  # S × n
        self.counters += counts
        self.activity += counts
        self.activation += a.sum(1)
        logits = torch.bmm(a, self.w2.transpose(1, 2))  # S × B × C
        log_p = F.log_softmax(logits, dim=2)
        losses = -log_p.gather(2, y[:, :, None]).squeeze(2).mean(1)
        grad_logits = log_p.exp_()
        grad_logits.scatter_add_(2, y[:, :, None], torch.full_like(grad_logits[:, :, :1], -1.0)).div_(b)
        grad_w2 = torch.bmm(grad_logits.transpose(1, 2), a)  # S × C × n
        grad_h = torch.bmm(grad_logits, self.w2).mul_(torch.minimum(a, r).sign_())
        n = self.w1.shape[1]
        if not self.sparse_rows:
            return losses, torch.bmm(grad_h.transpose(1, 2), x), grad_w2, counts
        grad_w1 = []
        for s in range(s_runs):  # only the rows active in the run's batch (SDMLPFunction)
            rows = counts[s].nonzero().squeeze(1)
            if rows.numel() * 4 > n * 3:
                grad_w1.append((None, grad_h[s].T @ x[s]))
            else:
                grad_w1.append((rows, grad_h[s].index_select(1, rows).T @ x[s]))
        return losses, grad_w1, grad_w2, counts

    @torch.no_grad()
    def apply_constraints(self, changed: torch.Tensor | None) -> None:
        """Clamp ≥ 0 and unit address rows; `changed` (S × n bool): the rows a step changed
        (the others are divided by exactly 1, keeping their bits), None: every row."""
        if self.positive:
            self.w1.clamp_(min=0)
        if self.l2:
            norms = torch.linalg.vector_norm(self.w1, dim=2).clamp_min_(1e-12)
            if changed is not None:
                norms = torch.where(changed, norms, torch.ones_like(norms))
            self.w1.div_(norms[:, :, None])
        if self.positive:
            self.w2.clamp_(min=0)

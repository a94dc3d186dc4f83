"""Approximate Top-K for large SDM layers (`model.topk_search: lowrank`; the default `exact`
stays the reference).

An SDM read is a nearest-address search, and after the GABA switch only ~k of n neurons
are active per input, yet the exact layer projects every input on all n addresses to find
them. Here a cheap prescreen picks, for a whole batch, the candidate neurons; the exact
activations, the backward and the constraints then touch only those rows.

Prescreen. P (d × r) holds the first r principal directions of the training inputs seen so
far (of their second moment, accumulated task by task: `observe`), and the index holds
every address projected on them, W·P (n × r), refreshed row by row as a step moves
addresses (only the rows it changed) and rebuilt at every epoch start. For a batch X the
scores S = (X·P)(W·P)ᵀ approximate the exact X·Wᵀ (the error is the inner product of the
two residuals outside P's span). Which neurons become the batch's candidates:
- `search_margin` (default 0.05): neuron j when, for some input i,
  S_ij ≥ (1 − margin)·g_j·ṽ_i, with g_j its GABA response (1 for the other k approaches)
  and ṽ_i the (k+1)-th largest of the maxima of S_i over blocks of 32 neurons (at most the
  (k+1)-th largest score: a conservative threshold, and no Top-K over all n scores per
  input). A neuron is active when its score exceeds g_j·v_{k+1}, so this keeps the exact
  layer's active set and its top k+1 up to the prescreen's error: the approximate layer
  follows the exact one, and is faster where the exact layer is sparse (few neurons
  active per batch).
- `search_candidates` c > 0: also (or, with `search_margin: null`, only) each input's c
  best approximate scores. With the margin off this approximates the top k, not the
  active set: where GABA responses are below 1 (a neuron is then active for any input
  whose score exceeds g·v_{k+1}, often for many inputs) the neurons active beyond an
  input's best scores are dropped, and the layer is a different, sparser one.
Neurons whose GABA response is ≤ 0 are active for every input: candidates of every batch.
The exact scores of the union of candidates then give the Top-K among them.

Measured before choosing (docs/speed.md): on a trained 10,000-neuron layer, faiss
(faiss-cpu 1.15: flat, IVF and HNSW inner-product indexes) searched a batch more slowly
than this prescreen and cannot update rows in place (HNSW) or cheaply (IVF).

When the layer falls back to the exact path (every such step is exact):
- the layer has fewer than `search_min_neurons` neurons (measured at 1,000 neurons, Split
  Fashion-MNIST after the switch: a batch's candidates exceeded 30% of the layer at every
  step, so the path stayed exact and the attempts cost ~9%);
- the union of candidates exceeds `search_max_union`·n (the GABA switch phase, where
  every neuron is excited, a k schedule whose k is still large, or a batch for which the
  exact layer is not sparse); the next 8 training steps then take the exact path without
  computing the prescreen (16, 32, then 64 steps after such batches in a row; back to 8
  after a batch that fits, and at every epoch start), and the index is dropped until the
  next attempt rebuilds it (refreshing it row by row on exact steps cost more than the
  attempts: measured in `benchmarks/gaba_union.py`).
These rules depend on the data and weights only, so runs stay reproducible and resumable
bit for bit; no timing decides.

Recall: every `search_recall_every` approximate training steps, the first
`search_recall_inputs` inputs of the batch also go through the exact layer, and the model reports (since the
last evaluation) the recall of the true top k (the share of each input's k largest exact
scores among the candidates), the recall of active units (the share of (input, neuron)
pairs active in the exact layer that are active in the approximate one), the share of
approximate steps and the mean union size.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCK = 32  # neurons per block of the ṽ estimate


class LowRankSearch(nn.Module):
    """The prescreen index of one SDM layer and its recall statistics (buffers: saved and
    restored with the model, so a resumed run selects exactly what the uninterrupted one did)."""

    STATS = ("samples", "topk_hits", "topk_total", "active_hits", "active_total", "approx_steps", "exact_steps", "union_sum")

    def __init__(self, neurons: int, input_dim: int, rank: int, margin: float | None, candidates: int, max_union: float,
                 min_neurons: int, recall_every: int, recall_inputs: int, retry_after: int = 8):
        super().__init__()
        self.neurons, self.rank = neurons, min(rank, input_dim)
        self.margin, self.candidates = margin, min(candidates, neurons)
        self.max_union, self.min_neurons, self.retry_after = max_union, min_neurons, retry_after
        self._skip = 0  # training steps left on the exact path after a batch with too many candidates
        self._failures = 0  # such batches in a row (the wait before the next attempt doubles with each)
        self.recall_every, self.recall_inputs = recall_every, recall_inputs
        self.register_buffer("second_moment", torch.zeros(input_dim, input_dim, dtype=torch.float64))
        self.register_buffer("samples_seen", torch.zeros((), dtype=torch.int64))
        self.register_buffer("projection", torch.zeros(input_dim, self.rank))
        self.register_buffer("stats", torch.zeros(len(self.STATS), dtype=torch.float64))
        self.index: torch.Tensor | None = None  # W·P, derived (rebuilt, never saved)
        self._index_version: int | None = None  # the address tensor's version the index reflects
        self._scores: torch.Tensor | None = None  # reused B × n buffer of the prescreen
        self.steps = 0  # training steps since the epoch start (the recall sampling's clock)

    # ------------------------------------------------------------ index

    @property
    def enabled(self) -> bool:
        return self.neurons >= self.min_neurons and int(self.samples_seen) > 0

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Add a task's (prepared) training inputs to the second moment and recompute P."""
        x = x.detach().reshape(len(x), -1)
        self.second_moment += (x.T.double() @ x.double()).to(self.second_moment.device)
        self.samples_seen += len(x)
        _, vectors = torch.linalg.eigh(self.second_moment / float(self.samples_seen))
        self.projection.copy_(vectors[:, -self.rank:].flip(1).to(self.projection.dtype))
        self.index = None

    @torch.no_grad()
    def rebuild(self, weight: torch.Tensor) -> None:
        self.index = (weight.detach() @ self.projection).contiguous()
        self._index_version = weight._version

    @torch.no_grad()
    def refresh(self, weight: torch.Tensor, rows: torch.Tensor | None) -> None:
        """After a step: re-project the rows it changed (all rows when `rows` is None)."""
        if self.index is None or not self.enabled:
            return
        if rows is None:
            self.rebuild(weight)
        else:
            self.index.index_copy_(0, rows, weight.detach().index_select(0, rows) @ self.projection)
            self._index_version = weight._version

    def start_epoch(self) -> None:
        """A full rebuild at every epoch start (checkpoints are taken between epochs: a resumed
        run rebuilds where the uninterrupted one did), and the recall clock restarts."""
        self.index = None
        self.steps = 0
        self._skip = 0
        self._failures = 0

    # ------------------------------------------------------------ candidates

    @torch.no_grad()
    def select(self, x: torch.Tensor, weight: torch.Tensor, g: torch.Tensor | None, k: int) -> torch.Tensor | None:
        """Ascending indices of the batch's candidate neurons, or None for the exact path."""
        n = self.neurons
        if k + 1 > n * self.max_union or not self.enabled:
            return None
        if self.training and self._skip > 0:  # the last batches' candidates were too many
            self._skip -= 1
            return None
        excited = None
        if g is not None:
            excited = g <= 0  # active wherever their score is > 0: candidates of every input
            if int(excited.sum()) > n * self.max_union:  # the GABA switch phase
                if self.training:
                    self.index = None  # (no row refresh on these exact steps)
                return None
        if self.index is None or self._index_version != weight._version:
            self.rebuild(weight)
        b = len(x)
        scores = self._scores
        if scores is None or scores.shape[0] < b or scores.device != x.device:
            scores = self._scores = torch.empty(b, n, device=x.device)
        s = scores[:b]
        torch.mm(x @ self.projection, self.index.T, out=s)
        keep = torch.zeros(n, dtype=torch.bool, device=x.device)
        if self.candidates:
            keep[torch.topk(s, min(self.candidates, n), dim=1, sorted=False).indices.reshape(-1)] = True
        if self.margin is not None:
            # ṽ: the (k+1)-th largest of the maxima over blocks of neurons (≤ the (k+1)-th largest score)
            full = n // BLOCK
            if full >= k + 1:
                maxima = s[:, : full * BLOCK].reshape(b, full, BLOCK).amax(2)
                if full * BLOCK < n:
                    maxima = torch.cat([maxima, s[:, full * BLOCK :].amax(1, keepdim=True)], 1)
            else:  # too few blocks: the (k+1)-th largest score itself
                maxima = s
            v_est = torch.topk(maxima, k + 1, dim=1).values[:, -1].clamp_min_(0)
            if g is None:
                s.sub_(v_est[:, None], alpha=1.0 - self.margin)
            else:
                s.addr_(v_est, g, alpha=-(1.0 - self.margin))
            keep |= s.amax(0) >= 0
        if excited is not None:
            keep |= excited
        cols = keep.nonzero().squeeze(1)
        if not k + 1 <= len(cols) <= n * self.max_union:
            if self.training:
                # wait 8, 16, 32, then 64 steps before trying again, and drop the index meanwhile:
                # exact steps then skip its row refresh (re-projecting hundreds to thousands of
                # changed rows a step), and the next attempt rebuilds it once
                self._skip = self.retry_after << min(self._failures, 3)
                self._failures += 1
                self.index = None
            return None
        if self.training:
            self._failures = 0
        return cols

    def note_step(self, approximate: bool, union: int = 0) -> None:
        self.stats[5 if approximate else 6] += 1
        if approximate:
            self.stats[7] += union

    def wants_recall_sample(self) -> bool:
        self.steps += 1
        return self.recall_every > 0 and (self.steps - 1) % self.recall_every == 0

    @torch.no_grad()
    def note_recall(self, exact_r: torch.Tensor, exact_a: torch.Tensor, cols: torch.Tensor, approx_a: torch.Tensor, k: int) -> None:
        """Compare the approximate layer with the exact one on a few inputs: `exact_r`,
        `exact_a` (m × n) are the exact scores and activations, `approx_a` (m × |cols|)."""
        m = len(exact_r)
        in_cols = torch.zeros(self.neurons, dtype=torch.bool, device=cols.device)
        in_cols[cols] = True
        top = torch.topk(exact_r, k, dim=1).indices
        exact_active = exact_a > 0
        found = torch.zeros_like(exact_active)
        found[:, cols] = approx_a > 0
        self.stats[0] += m
        self.stats[1] += float(in_cols[top].sum())
        self.stats[2] += m * k
        self.stats[3] += float((exact_active & found).sum())
        self.stats[4] += float(exact_active.sum())

    def read_stats(self) -> dict:
        """Recall and use of the approximate path since the last read (then reset)."""
        s = self.stats.tolist()
        self.stats.zero_()
        steps = s[5] + s[6]
        out = {"search_approx_fraction": s[5] / steps if steps else None,
               "search_union_fraction": s[7] / s[5] / self.neurons if s[5] else None,
               "search_topk_recall": s[1] / s[2] if s[2] else None,
               "search_active_recall": s[3] / s[4] if s[4] else None}
        return out


class SDMLPSubsetFunction(torch.autograd.Function):
    """logits = W₂[:, U] · TopK(W₁[U] x) on the candidate neurons U only, with a hand-written
    backward (as `SDMLPFunction`, models/sdmlp.py): only the rows of W₁ and the columns of
    W₂ of neurons active in the batch get a gradient; with `batch["row_sparse"]` both are
    sparse COO tensors and the rows are recorded as `batch["rows"]` for the constraints."""

    @staticmethod
    def forward(ctx, x, addresses, values, topk, cols: torch.Tensor, batch: dict):
        w_u = addresses.index_select(0, cols)
        v_u = values.index_select(1, cols)
        r = (x @ w_u.T).relu_()
        a = topk.activate(r, cols)
        batch["active"] = topk.batch_active_counts if topk.training else None
        batch["cols"] = cols
        batch["r"], batch["a"] = r, a  # for the recall sample, dropped right after the forward
        ctx.batch = batch
        ctx.shapes = addresses.shape, values.shape
        ctx.save_for_backward(x, w_u, v_u, r, a, cols)
        return a @ v_u.T

    @staticmethod
    def backward(ctx, grad_logits):
        x, w_u, v_u, r, a, cols = ctx.saved_tensors
        batch = ctx.batch
        (n, d), (c, _) = ctx.shapes
        need_x, need_w1, need_w2 = ctx.needs_input_grad[:3]
        local = (a.detach().sign().sum(0) > 0).nonzero().squeeze(1)  # active among the candidates
        rows = cols.index_select(0, local)
        a_act = a.index_select(1, local)
        sparse = batch.get("row_sparse")
        grad_w2 = None
        if need_w2:
            g2 = grad_logits.T @ a_act  # C × active
            if sparse:
                idx = torch.stack([torch.arange(c, device=rows.device).repeat_interleave(len(rows)), rows.repeat(c)])
                grad_w2 = torch.sparse_coo_tensor(idx, g2.reshape(-1), (c, n), is_coalesced=True, check_invariants=False)
            else:
                grad_w2 = torch.zeros(c, n, dtype=g2.dtype, device=g2.device).index_copy_(1, rows, g2)
        if not (need_x or need_w1):
            return None, None, grad_w2, None, None, None
        v_act = v_u.index_select(1, local)
        grad_h = (grad_logits @ v_act).mul_(torch.minimum(a_act, r.index_select(1, local)).sign_())
        grad_x = grad_h @ w_u.index_select(0, local) if need_x else None
        grad_w1 = None
        if need_w1:
            g1 = grad_h.T @ x
            if sparse:
                batch["rows"] = rows
                grad_w1 = torch.sparse_coo_tensor(rows[None], g1, (n, d), is_coalesced=True, check_invariants=False)
            else:
                grad_w1 = torch.zeros(n, d, dtype=g1.dtype, device=g1.device).index_copy_(0, rows, g1)
        return grad_x, grad_w1, grad_w2, None, None, None

"""Continual-learning metrics: pure functions of the accuracy matrix, and neuron statistics.

R is a T × T array with R[i, j] = accuracy (a fraction in [0, 1]) on the test set of task
j after training on task i. Every task is evaluated after every task, so R is full.
"""

from __future__ import annotations

import math

import numpy as np


def _matrix(R) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square and non-empty, got shape {R.shape}")
    return R


def final_average_accuracy(R) -> float:
    """A_T = (1/T) Σ_j R[T−1, j]: mean accuracy over all tasks after the last one (the paper's headline)."""
    R = _matrix(R)
    return float(R[-1].mean())


def average_incremental_accuracy(R) -> float:
    """(1/T) Σ_i (1/(i+1)) Σ_{j≤i} R[i, j] (Rebuffi et al. 2017, iCaRL)."""
    R = _matrix(R)
    return float(np.mean([R[i, : i + 1].mean() for i in range(len(R))]))


def learning_accuracy(R) -> float:
    """(1/T) Σ_j R[j, j]: accuracy on each task right after learning it."""
    R = _matrix(R)
    return float(np.diag(R).mean())


def forgetting(R) -> float:
    """Average forgetting (Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning").

    f_j = max_{l ∈ j..T−2} R[l, j] − R[T−1, j] for each task j < T−1, averaged over those
    tasks: how far each old task fell from its best accuracy seen before the last task
    (only l ≥ j: a task cannot be forgotten before it is learnt). 0 for T = 1.
    """
    R = _matrix(R)
    T = len(R)
    if T == 1:
        return 0.0
    return float(np.mean([R[j : T - 1, j].max() - R[T - 1, j] for j in range(T - 1)]))


def backward_transfer(R) -> float:
    """BWT = (1/(T−1)) Σ_{j<T−1} (R[T−1, j] − R[j, j]) (Lopez-Paz & Ranzato 2017, GEM). 0 for T = 1."""
    R = _matrix(R)
    T = len(R)
    if T == 1:
        return 0.0
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def forward_transfer(R, baseline) -> float:
    """FWT = (1/(T−1)) Σ_{j≥1} (R[j−1, j] − b_j) (Lopez-Paz & Ranzato 2017), b_j the accuracy
    of a randomly initialised model on task j. 0 for T = 1."""
    R = _matrix(R)
    b = np.asarray(baseline, dtype=float)
    T = len(R)
    if T == 1:
        return 0.0
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)]))


def pooled_accuracy(task_accuracies, test_sizes) -> float:
    """Σ_j a_j n_j / Σ_j n_j: correct predictions over all test samples of the tasks, each
    task weighted by its test-set size n_j. After the last task this is the reference
    implementation's `val/accuracy`; it equals the mean over tasks when all n_j are equal."""
    a = np.asarray(task_accuracies, dtype=float)
    n = np.asarray(test_sizes, dtype=float)
    if a.shape != n.shape or a.size == 0:
        raise ValueError(f"need one test size per task accuracy, got {a.size} accuracies and {n.size} sizes")
    if n.sum() <= 0:
        raise ValueError("the test sets are empty")
    return float((a * n).sum() / n.sum())


def summarize(R) -> dict:
    return {
        "final_average_accuracy": final_average_accuracy(R),
        "average_incremental_accuracy": average_incremental_accuracy(R),
        "forgetting": forgetting(R),
        "backward_transfer": backward_transfer(R),
        "learning_accuracy": learning_accuracy(R),
    }


def fraction_dead(activation_counts, threshold: float = 0) -> float:
    """Fraction of neurons whose activation count over a window is ≤ `threshold`.

    With threshold 0: the neurons never active for any training input of the window
    (the reference's dead-neuron statistic, counted over an epoch of training data).
    """
    c = np.asarray(activation_counts)
    return float((c <= threshold).mean()) if c.size else 0.0


REFERENCE_ACTIVE_THRESHOLD = 1e-4  # the reference's `active_threshold`


def fraction_dead_by_activation(activation_sums, threshold: float = REFERENCE_ACTIVE_THRESHOLD) -> float:
    """Fraction of neurons whose activation summed over a set of inputs is < `threshold`:
    the reference implementation's definition of a dead neuron (threshold 1e-4), which it
    applied to a training epoch (`fraction_dead_train_neurons`) and to the seen tasks'
    test sets (`frac_dead_neurons_across_layer_val_dataset`). Unlike `fraction_dead`, a
    neuron active only with tiny values (total < threshold) counts as dead."""
    s = np.asarray(activation_sums, dtype=float)
    return float((s < threshold).mean()) if s.size else 0.0


def active_per_input(hidden) -> float:
    """Mean number of hidden units > 0 per input (rows of `hidden`, torch or numpy)."""
    h = hidden.detach().cpu().numpy() if hasattr(hidden, "detach") else np.asarray(hidden)
    return float((h > 0).sum(axis=1).mean()) if len(h) else 0.0


def mean_sem(values) -> tuple[float, float]:
    """Mean and standard error of the mean, std(ddof=1)/√n (0 for a single value)."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), 0.0
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))


def class_entropy(class_counts) -> np.ndarray:
    """Entropy (nats) of each neuron's distribution of activity over classes.

    `class_counts` is neurons × classes: how many inputs of each class a neuron was active
    for. p = counts / row total; H = −Σ p ln p with 0 ln 0 = 0 (the reference added 1e-15
    to zero probabilities, which changes H by < 1e-12). A neuron never active has no
    distribution: NaN. H ranges from 0 (one class only) to ln C (all classes equally).
    """
    c = np.asarray(class_counts, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"class counts must be neurons × classes, got shape {c.shape}")
    total = c.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = c / total
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    h = terms.sum(1)
    h[total[:, 0] <= 0] = np.nan
    return h


def mean_class_entropy(class_counts, weighted: bool = False) -> float:
    """Mean class entropy over the neurons active at least once (the reference's notebook
    statistic). `weighted`: each neuron weighted by its share of all activations, so a
    neuron active for many inputs counts more (the notebook's second number). NaN when no
    neuron was ever active."""
    c = np.asarray(class_counts, dtype=np.float64)
    h = class_entropy(c)
    alive = ~np.isnan(h)
    if not alive.any():
        return math.nan
    if not weighted:
        return float(h[alive].mean())
    w = c.sum(1)[alive]
    return float((w / w.sum() * h[alive]).sum())


def alive_fraction(activation_counts, threshold: float = 0) -> float:
    """Fraction of neurons active for more than `threshold` inputs (1 − `fraction_dead`).
    With threshold 0 and the counts accumulated over the whole run, this is the
    reference's "alive neurons" (a neuron counts once it was active for any input)."""
    return 1.0 - fraction_dead(activation_counts, threshold) if np.asarray(activation_counts).size else 0.0

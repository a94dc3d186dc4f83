"""Paired timing shared by the A/B benchmarks: two engines train alternate epochs."""

from __future__ import annotations

import time


def alternate_epochs(engines: dict, epochs: int) -> dict[str, list[float]]:
    """Seconds of `Engine.train_epoch` on the first task for each of two engines, alternating
    AB then BA so that drift in the machine's speed falls on both equally. The first epoch of
    each is warm-up: callers drop it."""
    first, second = engines
    times: dict[str, list[float]] = {first: [], second: []}
    for epoch in range(epochs):
        for name in (first, second) if epoch % 2 == 0 else (second, first):
            engine = engines[name]
            t = time.perf_counter()
            engine.train_epoch(engine.tasks[0], epoch)
            times[name].append(time.perf_counter() - t)
    return times

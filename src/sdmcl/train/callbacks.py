"""Observers of a run: loggers, investigations and anything else that watches training.

The engine calls these hooks on every callback of the run, in order; a callback reads the
engine (`engine.model`, `engine.cfg`, `engine.state`, `engine.run_dir`) and never changes
what is trained. State that must survive a resume is returned by `state_dict()` and handed
back to `load_state_dict()` (it is stored in the checkpoint under the callback's `name`).

    on_run_start(engine, resumed)          before the first epoch (after a restore when resumed)
    on_task_start(engine, task)            before the first epoch of a task (not on resume mid-task)
    after_step(engine)                     after every optimizer step and the constraints
    on_epoch_end(engine, task, epoch_in_task)   after an epoch (epoch_in_task counts from 1)
    on_evaluation(engine, entry)           after each evaluation, with its metrics.jsonl entry
    on_task_end(engine, task, entry)       after a task's final evaluation
    on_run_end(engine, summary)            after summary.json is written
    close()                                always, when the run stops (finished, failed or stopped)

`after_step` is on the hot path: the engine calls it only for callbacks that override it.
"""

from __future__ import annotations


class Callback:
    name = "callback"

    def on_run_start(self, engine, resumed: bool) -> None:
        pass

    def on_task_start(self, engine, task) -> None:
        pass

    def after_step(self, engine) -> None:
        pass

    def on_epoch_end(self, engine, task, epoch_in_task: int) -> None:
        pass

    def on_evaluation(self, engine, entry: dict) -> None:
        pass

    def on_task_end(self, engine, task, entry: dict) -> None:
        pass

    def on_run_end(self, engine, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def overrides(cb: Callback, hook: str) -> bool:
    """True when `cb` implements `hook` itself (the engine skips inherited no-ops on hot paths)."""
    return getattr(type(cb), hook) is not getattr(Callback, hook)


def build_callbacks(cfg) -> list[Callback]:
    """The callbacks a run config asks for: the pitfall warnings (train/pitfalls.py), always,
    then the loggers of `output.loggers` (train/loggers.py), then the investigations of
    `investigate` (train/investigations.py)."""
    from sdmcl.registry import LOGGERS, load_all
    from sdmcl.train.pitfalls import PitfallWarnings

    load_all()
    callbacks: list[Callback] = [PitfallWarnings()] + [LOGGERS[name].build(cfg) for name in cfg.output.loggers]
    if cfg.investigate.enabled():
        from sdmcl.train.investigations import build_investigations

        callbacks += build_investigations(cfg.investigate)
    return callbacks

"""Name → (declared config dataclass, builder) tables for models and regularizers.

Each model or regularizer file registers itself with a decorator, declaring its config
dataclass (with defaults) next to the code that uses it. `config.py` validates a YAML
section against the dataclass of the name it asks for; the engine builds from it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Entry:
    name: str
    config_class: type
    build: Callable[..., Any]
    summary: str


MODELS: dict[str, Entry] = {}
REGULARIZERS: dict[str, Entry] = {}


def register_model(name: str, config_class: type, summary: str = ""):
    def wrap(build):
        MODELS[name] = Entry(name, config_class, build, summary or (build.__doc__ or "").strip().split("\n")[0])
        return build

    return wrap


def register_regularizer(name: str, config_class: type, summary: str = ""):
    def wrap(build):
        REGULARIZERS[name] = Entry(name, config_class, build, summary or (build.__doc__ or "").strip().split("\n")[0])
        return build

    return wrap


def build_model(cfg: Any, input_dim: int, num_classes: int, input_shape: tuple[int, ...] | None = None):
    """Build the model `cfg.name` from its config. A builder that declares an `input_shape`
    parameter also receives the shape of one sample, e.g. (C, H, W) for images (inputs
    still arrive flattened as (B, input_dim); image models reshape them); the others are
    called with (cfg, input_dim, num_classes) only."""
    build = MODELS[cfg.name].build
    if "input_shape" in inspect.signature(build).parameters:
        return build(cfg, input_dim, num_classes, input_shape=tuple(input_shape or (input_dim,)))
    return build(cfg, input_dim, num_classes)


def load_all() -> None:
    """Import every model and regularizer module so their registrations run."""
    import sdmcl.models  # noqa: F401
    import sdmcl.regularizers  # noqa: F401

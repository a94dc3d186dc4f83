"""Name → (declared config dataclass, builder) tables for models and regularizers.

Each model or regularizer file registers itself with a decorator, declaring its config
dataclass (with defaults) next to the code that uses it. `config.py` validates a YAML
section against the dataclass of the name it asks for; the engine builds from it.
"""

from __future__ import annotations

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


def load_all() -> None:
    """Import every model and regularizer module so their registrations run."""
    import sdmcl.models  # noqa: F401
    import sdmcl.regularizers  # noqa: F401

"""Name → implementation tables: models, regularizers, data sources and loggers.

Each model or regularizer file registers itself with a decorator, declaring its config
dataclass (with defaults) next to the code that uses it. `config.py` validates a YAML
section against the dataclass of the name it asks for; the engine builds from it.
Data sources register a `sdmcl.data.sources.DataSource` object; loggers a factory of a
`Callback`. Code outside sdmcl registers its own the same way (a plugin, `plugins.py`).
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
DATA_SOURCES: dict[str, Any] = {}  # name → sdmcl.data.sources.DataSource


@dataclass(frozen=True)
class LoggerEntry:
    name: str
    build: Callable[..., Any]  # build(cfg: RunConfig) -> sdmcl.train.callbacks.Callback
    summary: str
    extra: str | None = None  # the pip extra of sdmcl that installs what it needs
    requires: tuple[str, ...] = ()  # modules it imports (checked when a config asks for it)


LOGGERS: dict[str, LoggerEntry] = {}


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


def register_data_source(source):
    """Register a data source object (a `sdmcl.data.sources.DataSource` instance) under its
    `name`; `data.source: <name>` selects it. Returns the source."""
    name = getattr(source, "name", None)
    if isinstance(source, type) or not name or not callable(getattr(source, "load", None)):
        raise TypeError("register_data_source takes a DataSource instance with a name and a load() method, "
                        "e.g. register_data_source(MySource('my-data', 'what it is'))")
    DATA_SOURCES[name] = source
    return source


def register_logger(name: str, summary: str = "", extra: str | None = None, requires: tuple[str, ...] = ()):
    """Register a factory `build(cfg) -> Callback` for `output.loggers: [<name>]`; `requires`
    names the modules it needs, `extra` the pip extra of sdmcl that installs them."""
    def wrap(build):
        LOGGERS[name] = LoggerEntry(name, build, summary or (build.__doc__ or "").strip().split("\n")[0], extra,
                                    tuple(requires))
        return build

    return wrap


def load_all() -> None:
    """Import every built-in model, regularizer, data source and logger, then the plugins
    installed under the `sdmcl.plugins` entry-point group, so their registrations run."""
    import sdmcl.data.sources  # noqa: F401
    import sdmcl.models  # noqa: F401
    import sdmcl.regularizers  # noqa: F401
    import sdmcl.train.loggers  # noqa: F401
    from sdmcl.plugins import load_entry_points

    load_entry_points()

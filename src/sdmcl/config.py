"""Typed run configuration: YAML files plus `key=value` overrides, validated before any work.

A config is a tree of dataclasses. The `model` and `regularizer` sections are validated
against the dataclass that the chosen model or regularizer declares (see `registry.py`),
so every method's defaults live beside its code. Every mistake raises `ConfigError` with a
one-line message naming the dotted key, what is wrong and how to fix it.

An *experiment* file is a run config plus two optional top-level keys:
`seeds: [0, 1, 2]` (one run per seed) and `variants: {label: {dotted.key: value, ...}}`
(one run per variant, each the base config with its overrides).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sdmcl.errors import ConfigError
from sdmcl.registry import MODELS, REGULARIZERS, load_all


@dataclass
class DataConfig:
    source: str = "digits"  # mnist | fashion-mnist | cifar10 | cifar100 | digits | embeddings
    path: str | None = None  # directory (or embedding file) holding the original files
    data_dir: str | None = None  # download cache; default $SDMCL_DATA_DIR or ~/.cache/sdmcl
    pixel_scale: Literal["unit", "raw255"] = "unit"  # [0,1], or the reference's raw [0,255]
    download: bool = True


@dataclass
class BenchmarkConfig:
    classes_per_task: int = 2
    class_order: str | list[int] = "natural"  # natural | seeded | explicit list of class ids
    class_order_seed: int | None = None  # for 'seeded' (paper: 3, 15, 27, 97)
    joint: bool = False  # one task with every class (pretraining, oracle)
    num_tasks: int | None = None  # only the first N tasks


@dataclass
class OptimConfig:
    name: Literal["sgd", "sgdm", "adam", "rmsprop", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9  # sgdm only
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0  # max global gradient norm; null disables


@dataclass
class TrainConfig:
    epochs_per_task: int = 20
    batch_size: int = 128
    eval_every: int = 1  # evaluate seen tasks every N epochs; 0 = only at task ends
    eval_batch_size: int = 512  # chunks whose activations stay in cache: fastest on CPU here (docs/speed.md)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch CPU threads; null = torch's default
    flush_denormal: bool = True  # CPU: treat floats below 1e-38 as 0 (denormals make matmuls ~10% slower)
    validation_fraction: float = 0.0  # share of each task's training data held out for validation (NISPA: 0.1); 0 = none


@dataclass
class OutputConfig:
    dir: str = "runs"
    checkpoint_every: int = 0  # epochs; 0 = at task ends only
    plots: bool = True
    progress: bool = True


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    model: Any = None  # the chosen model's declared config dataclass
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    regularizer: Any = None  # the chosen regularizer's declared config dataclass
    output: OutputConfig = field(default_factory=OutputConfig)
    init_from: str | None = None  # pretrained checkpoint: new head, GABA counters kept

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def stamp(self) -> str:
        """Stable hash of everything that determines the results (not where they go)."""
        blob = json.dumps(result_identity(self.to_dict()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


# Keys of a resolved config that do not change what a run computes: where outputs and data
# live, how many threads run it, how evaluation is chunked. The run stamp and the grouping of
# runs into table rows ignore them.
NON_RESULT_KEYS = ("output", "train.threads", "train.eval_batch_size", "data.data_dir", "data.download")


def result_identity(d: dict) -> dict:
    """A copy of a resolved config dict without the keys that do not change results."""
    d = json.loads(json.dumps(d))
    for dotted in NON_RESULT_KEYS:
        *parents, last = dotted.split(".")
        node = d
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return d


EXPERIMENT_KEYS = ("seeds", "variants")


# ---------------------------------------------------------------- type checking


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed:
            return value
        near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, allowed))}{hint}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config type {tp!r} for {key}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _unknown_key(key: str, prefix: str, valid: list[str]) -> ConfigError:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"{prefix}{key}: unknown key{hint}")


def _build_dataclass(cls, raw: Any, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise _unknown_key(str(key), prefix, fields)
        values[key] = _coerce(value, hints[key], prefix + key)
    return cls(**values)


def _registered_section(table, raw: Any, prefix: str, default: str, what: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a mapping with at least 'name', got {raw!r}")
    name = raw.get("name", default)
    if name not in table:
        near = difflib.get_close_matches(str(name), list(table), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"{prefix}.name: unknown {what} {name!r}{hint}; choose from {', '.join(sorted(table))}")
    cfg = _build_dataclass(table[name].config_class, {**raw, "name": name}, prefix + ".")
    cfg.check()
    return cfg


# ---------------------------------------------------------------- loading


def parse_config(raw: dict) -> RunConfig:
    """Validate a plain dict (from YAML) into a RunConfig."""
    load_all()
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(raw).__name__}")
    top = [f.name for f in dataclasses.fields(RunConfig)]
    for key in raw:
        if key not in top:
            raise _unknown_key(str(key), "", top)
    simple = {k: v for k, v in raw.items() if k in ("name", "seed", "init_from")}
    cfg = _build_dataclass(RunConfig, simple, "")
    for sec, cls in (("data", DataConfig), ("benchmark", BenchmarkConfig), ("optim", OptimConfig),
                     ("train", TrainConfig), ("output", OutputConfig)):
        setattr(cfg, sec, _build_dataclass(cls, raw.get(sec), sec + "."))
    cfg.model = _registered_section(MODELS, raw.get("model"), "model", "sdmlp", "model")
    if not getattr(MODELS[cfg.model.name].build, "uses_gradients", True) and cfg.optim != OptimConfig():
        raise ConfigError(f"optim: model {cfg.model.name!r} learns without gradients and uses no optimizer; remove the optim settings")
    cfg.regularizer = _registered_section(REGULARIZERS, raw.get("regularizer"), "regularizer", "none", "regularizer")
    check(cfg)
    return cfg


def check(cfg: RunConfig) -> None:
    """Checks of values and combinations that no single field's type catches."""
    positive = [("train.epochs_per_task", cfg.train.epochs_per_task), ("train.batch_size", cfg.train.batch_size),
                ("train.eval_batch_size", cfg.train.eval_batch_size), ("benchmark.classes_per_task", cfg.benchmark.classes_per_task)]
    for key, v in positive:
        if v < 1:
            raise ConfigError(f"{key}: must be >= 1, got {v}")
    for key, v in (("train.eval_every", cfg.train.eval_every), ("output.checkpoint_every", cfg.output.checkpoint_every)):
        if v < 0:
            raise ConfigError(f"{key}: must be >= 0 (0 = only at task ends), got {v}")
    if not 0 <= cfg.train.validation_fraction < 1:
        raise ConfigError(f"train.validation_fraction: must be in [0, 1) (0 = no validation split), got {cfg.train.validation_fraction}")
    if cfg.train.threads is not None and cfg.train.threads < 1:
        raise ConfigError(f"train.threads: must be >= 1 or null, got {cfg.train.threads}")
    if not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr: must be > 0, got {cfg.optim.lr}")
    if cfg.optim.grad_clip is not None and not cfg.optim.grad_clip > 0:
        raise ConfigError(f"optim.grad_clip: must be > 0 or null (no clipping), got {cfg.optim.grad_clip}")
    if cfg.optim.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay: must be >= 0, got {cfg.optim.weight_decay}")
    if not 0 <= cfg.optim.momentum < 1:
        raise ConfigError(f"optim.momentum: must be in [0, 1), got {cfg.optim.momentum}")
    order = cfg.benchmark.class_order
    if isinstance(order, str) and order not in ("natural", "seeded"):
        raise ConfigError(f"benchmark.class_order: {order!r} is not 'natural', 'seeded' or a list of class ids")
    if isinstance(order, list):
        if not order:
            raise ConfigError("benchmark.class_order: the list is empty; give class ids in order, or 'natural'")
        dup = sorted({c for c in order if order.count(c) > 1})
        if dup:
            raise ConfigError(f"benchmark.class_order: classes {dup} appear more than once")
        if len(order) % cfg.benchmark.classes_per_task:
            raise ConfigError(f"benchmark.classes_per_task: {cfg.benchmark.classes_per_task} does not divide the {len(order)} classes of benchmark.class_order")
    if order == "seeded" and cfg.benchmark.class_order_seed is None:
        raise ConfigError("benchmark.class_order_seed: required when class_order is 'seeded' (the paper used 3, 15, 27, 97)")
    if order != "seeded" and cfg.benchmark.class_order_seed is not None:
        raise ConfigError("benchmark.class_order_seed: only used with class_order: seeded; set class_order: seeded or remove it")
    check_run = getattr(cfg.model, "check_run", None)  # a model's checks of settings outside its own section
    if check_run is not None:
        check_run(cfg)
    gradient_free = not getattr(MODELS[cfg.model.name].build, "uses_gradients", True)
    if gradient_free and cfg.regularizer.name != "none":
        raise ConfigError(f"regularizer.name: {cfg.regularizer.name!r} needs gradients, but model {cfg.model.name!r} learns without them; use regularizer: {{name: none}}")


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found; see `sdmcl list` for the experiments shipped in experiments/")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: malformed YAML ({problem}); fix the syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; a config is a YAML file") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return raw


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"{text!r}: an override is key=value, e.g. model.k=5 or train.epochs_per_task=50")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{text!r}: an override is key=value with a non-empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section; cannot set {key}")
        node = child
    node[parts[-1]] = value


def expand_experiment(raw: dict, overrides: list[str] = ()) -> list[tuple[str, RunConfig]]:
    """One (label, RunConfig) per variant × seed of an experiment dict."""
    raw = json.loads(json.dumps(raw))  # deep copy, and a check that it is plain data
    seeds = raw.pop("seeds", None)
    variants = raw.pop("variants", None)
    parsed_overrides = [parse_override(o) for o in overrides]
    for key, value in parsed_overrides:
        if key == "seeds":
            seeds = value
        else:
            set_dotted(raw, key, value)
    if seeds is None:
        seeds = [raw.get("seed", 0)]
    seeds = _coerce(seeds if isinstance(seeds, list) else [seeds], list[int], "seeds")
    if not seeds:
        raise ConfigError("seeds: the list is empty; give at least one seed or remove the key")
    if variants is None:
        variants = {raw.get("name", "run"): {}}
    if not isinstance(variants, dict) or not variants:
        raise ConfigError("variants: expected a mapping of label to overrides, e.g. {sdmlp: {model.name: sdmlp}}")
    runs = []
    for label, changes in variants.items():
        if not isinstance(changes, dict):
            raise ConfigError(f"variants.{label}: expected a mapping of dotted keys to values")
        base = json.loads(json.dumps(raw))
        for key, value in changes.items():
            if key == "model" or key == "regularizer":
                base[key] = value  # a whole section replaces the base one
            else:
                set_dotted(base, key, value)
        # command-line overrides win over variant settings
        for key, value in parsed_overrides:
            if key != "seeds":
                set_dotted(base, key, value)
        base.setdefault("name", str(label))
        if len(variants) > 1:
            base["name"] = f"{raw.get('name', 'exp')}-{label}"
        for seed in seeds:
            run_raw = {**base, "seed": seed}
            try:
                cfg = parse_config(run_raw)
            except ConfigError as e:
                if len(variants) > 1:
                    raise ConfigError(f"variant {label!r}: {e}") from None
                raise
            runs.append((str(label), cfg))
    return runs


def load_experiment(path: str | Path, overrides: list[str] = ()) -> list[tuple[str, RunConfig]]:
    return expand_experiment(read_yaml(path), overrides)

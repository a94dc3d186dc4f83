"""Typed run configuration: YAML files plus `key=value` overrides, validated before any work.

A config is a tree of dataclasses. The `model` and `regularizer` sections are validated
against the dataclass that the chosen model or regularizer declares (see `registry.py`),
so every method's defaults live beside its code. Every mistake raises `ConfigError` with a
one-line message naming the dotted key, what is wrong and how to fix it.

An *experiment* file is a run config plus optional top-level keys: `seeds: [0, 1, 2]`
(one run per seed), `variants: {label: {dotted.key: value, ...}}` (one run per variant) and
`grid: {dotted.key: [values]}` (the cross product); `experiment.py` expands them.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sdmcl.errors import ConfigError
from sdmcl.registry import LOGGERS, MODELS, REGULARIZERS, load_all
from sdmcl.strict_yaml import YAMLFileError, load_yaml_file, loads_yaml


@dataclass
class DataConfig:
    source: str = "digits"  # mnist | fashion-mnist | cifar10 | cifar100 | digits | embeddings
    path: str | None = None  # directory (or embedding file) holding the original files
    data_dir: str | None = None  # download cache; default $SDMCL_DATA_DIR or ~/.cache/sdmcl
    pixel_scale: Literal["unit", "raw255"] = "unit"  # [0,1] (the reference divides by 255 at load too), or raw [0,255]
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
    weight_decay: float | None = None  # null: 0.001 for adamw (the reference's default), 0 for the others
    grad_clip: float | None = 1.0  # max global gradient norm; null disables
    schedule: Literal["constant", "onecycle", "warmup_cosine"] = "constant"  # learning-rate schedule (train/optim.py)
    warmup_epochs: float = 0.0  # linear warm-up from 0 (constant, warmup_cosine)
    schedule_span: Literal["run", "task"] = "run"  # the schedule spans the whole run, or restarts with each task


@dataclass
class TrainConfig:
    epochs_per_task: int = 20
    batch_size: int = 128
    eval_every: int = 1  # evaluate seen tasks every N epochs; 0 = only at task ends
    eval_batch_size: int = 512  # chunks whose activations stay in cache: fastest on CPU here (docs/speed.md)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int | None = None  # torch CPU threads; null = torch's default
    oversubscribe: bool = False  # allow train.threads above the cores this process may use
    flush_denormal: bool = True  # CPU: treat floats below 1e-38 as 0 (denormals make matmuls ~10% slower)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # mixed precision (CUDA, image models): autocast, + loss scaling for fp16
    restart_k_schedule: bool = False  # with init_from: k schedules restart at epoch 0 instead of continuing the pretraining's count
    validation_fraction: float = 0.0  # share of each task's training data held out for validation (NISPA: 0.1); 0 = none


@dataclass
class AugmentConfig:
    """Training-time augmentation of image batches (data/augment.py), in the reference's order:
    random resized crop, horizontal flip, RandAugment, colour jitter, random erasing. The
    defaults of the strengths are the reference's ConvMixer settings."""

    enabled: bool = False
    crop_scale: float = 1.0  # random resized crop (square): area fraction drawn from [crop_scale, 1]; 1 = no crop
    flip: float = 0.5  # probability of a horizontal flip
    randaugment_ops: int = 2  # RandAugment: operations per image (0 = off)
    randaugment_magnitude: int = 12  # RandAugment magnitude bin, 0..30
    jitter: float = 0.0  # colour jitter: brightness, contrast and saturation factors in [1 - j, 1 + j]
    erase_prob: float = 0.0  # random erasing: probability per image
    erase_value: float | list[float] = 0.0  # fill of erased pixels (one value, or one per channel)


@dataclass
class OutputConfig:
    dir: str = "runs"
    checkpoint_every: int = 0  # epochs; 0 = at task ends only
    plots: bool = True
    progress: bool = True
    loggers: list[str] = field(default_factory=list)  # tensorboard | wandb (metrics.jsonl/csv are always written)
    wandb_project: str = "sdmcl"


@dataclass
class InvestigateConfig:
    """Run-time investigations (all off by default; they observe training and never change it)."""

    activations_every: int = 0  # epochs; per-class activation counts per neuron every N epochs and at task ends; 0 = off
    active_threshold: float = 0.0  # a neuron is active for an input when its activation is > this
    receptive_fields: int = 16  # with each activation snapshot, the address rows of the N most and N least used neurons
    update_norms: bool = False  # per step: update sizes of the address rows of neurons inactive vs active in the batch
    update_norms_every: int = 1  # measure every N-th step

    def enabled(self) -> bool:
        return self.activations_every > 0 or self.update_norms


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    model: Any = None  # the chosen model's declared config dataclass
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    regularizer: Any = None  # the chosen regularizer's declared config dataclass
    output: OutputConfig = field(default_factory=OutputConfig)
    investigate: InvestigateConfig = field(default_factory=InvestigateConfig)
    init_from: str | None = None  # pretrained checkpoint: new head, GABA counters kept

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def stamp(self) -> str:
        """Stable hash of everything that determines the results (not where they go, nor where
        the data lies: the content of the user's data files stands in for their path)."""
        from sdmcl.data.fingerprint import content_id

        identity = result_identity(self.to_dict())
        content = content_id(self.data.source, self.data.path, self.data.data_dir)
        if content is not None:
            identity["data"]["content"] = content
        if self.investigate.enabled():  # same results, more files: a directory of its own
            identity["investigate"] = dataclasses.asdict(self.investigate)
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


# Keys of a resolved config that do not change what a run computes: where outputs and data
# live, how many threads run it, how evaluation is chunked. The run stamp and the grouping of
# runs into table rows ignore them. (`data.path` is replaced in the stamp by a hash of the
# files' content where the source has no pinned checksums: data/fingerprint.py.)
NON_RESULT_KEYS = ("output", "investigate", "train.threads", "train.eval_batch_size", "data.data_dir", "data.download", "data.path",
                   "train.oversubscribe")


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


def config_id(d: dict) -> str:
    """Hash of a resolved config dict's result identity (its data path excluded): recorded in
    summary.json so that a config.yaml edited after the run is noticed when it is read back."""
    blob = json.dumps(result_identity(d), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def result_differences(a: dict, b: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every key that changes results and differs."""
    out = []

    def walk(x, y, prefix):
        for key in sorted(set(x) | set(y), key=str):
            vx, vy = x.get(key), y.get(key)
            if isinstance(vx, dict) and isinstance(vy, dict):
                walk(vx, vy, f"{prefix}{key}.")
            elif vx != vy:
                out.append((f"{prefix}{key}", vx, vy))

    walk(result_identity(a), result_identity(b), "")
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys: {'model': {'k': 5}} → {'model.k': 5} (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


EXPERIMENT_KEYS = ("seeds", "variants", "grid")
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# train.device: auto, cpu, mps, cuda or cuda:N (whether the device exists is checked by preflight.py)
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")

# AdamW's weight decay when optim.weight_decay is not given: the reference's default for its
# MLPs (`adamw_l2_loss_weight`; its ConvMixer used 0.005, set explicitly)
ADAMW_DEFAULT_WEIGHT_DECAY = 0.001


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


class _ValueOutOfRange(ConfigError):
    """A value of the right type that no field of that type accepts (nan, 2**70, a NUL)."""


def _coerce(value: Any, tp, key: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except _ValueOutOfRange:
                raise  # the right type but an impossible value: that message is the useful one
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
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT_MIN <= value <= INT_MAX:
                raise _ValueOutOfRange(f"{key}: {value} is out of range (integers are 64-bit: |value| < 2**63)")
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # one place for every configured float: nan and inf would pass any range check
            # (every comparison with nan is false) and surface later as "divergence"
            try:
                number = float(value)
            except OverflowError:
                raise _ValueOutOfRange(f"{key}: {value} is too large for a float; give a finite number") from None
            if not math.isfinite(number):
                raise _ValueOutOfRange(f"{key}: must be a finite number, got {value}")
            return number
    elif tp is str:
        if isinstance(value, str):
            if "\0" in value:
                raise _ValueOutOfRange(f"{key}: contains a NUL character; give plain text")
            return value
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected text, got {value!r} (YAML reads yes/no/on/off/true/false as "
                              f"booleans); quote it: '{value}'")
    else:
        raise TypeError(f"unsupported config type {tp!r} for {key}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value} (not a finite number)")
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
    if not isinstance(name, str):
        raise ConfigError(f"{prefix}.name: expected the name of a {what}, got {name!r}; choose from {', '.join(sorted(table))}")
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
                     ("train", TrainConfig), ("augment", AugmentConfig), ("output", OutputConfig), ("investigate", InvestigateConfig)):
        setattr(cfg, sec, _build_dataclass(cls, raw.get(sec), sec + "."))
    if cfg.optim.weight_decay is None:  # resolved here, so config.yaml and every reader see the value used
        cfg.optim.weight_decay = ADAMW_DEFAULT_WEIGHT_DECAY if cfg.optim.name == "adamw" else 0.0
    cfg.model = _registered_section(MODELS, raw.get("model"), "model", "sdmlp", "model")
    if not getattr(MODELS[cfg.model.name].build, "uses_gradients", True) and cfg.optim != OptimConfig(weight_decay=0.0):
        raise ConfigError(f"optim: model {cfg.model.name!r} learns without gradients and uses no optimizer; remove the optim settings")
    cfg.regularizer = _registered_section(REGULARIZERS, raw.get("regularizer"), "regularizer", "none", "regularizer")
    check(cfg)
    return cfg


FLOAT32_MAX = 3.4028234663852886e38


def check_decay_stability(optim: OptimConfig) -> None:
    """Values the optimizer cannot use: above float32's range (torch turns them into inf), and
    a weight decay that by itself makes every weight grow each step. For SGD and AdamW's
    decoupled decay a weight is multiplied by (1 − lr·wd) per step, unstable for lr·wd ≥ 2;
    with heavy-ball momentum μ the bound is 2(1 + μ). (Adam and RMSprop divide the decay's
    gradient by their running scale: no such bound.)"""
    for key in ("lr", "weight_decay"):
        if getattr(optim, key) > FLOAT32_MAX:
            raise ConfigError(f"optim.{key}: {getattr(optim, key)} is beyond float32's range (3.4e38)")
    bound = {"sgd": 2.0, "adamw": 2.0, "sgdm": 2.0 * (1 + optim.momentum)}.get(optim.name)
    if bound is not None and optim.lr * optim.weight_decay >= bound:
        raise ConfigError(f"optim.weight_decay: lr × weight_decay = {optim.lr * optim.weight_decay:g} ≥ {bound:g}: the decay alone "
                          f"makes every weight grow each step and the run would diverge; use weight_decay < {bound / optim.lr:g}")


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
    if not DEVICE_PATTERN.match(cfg.train.device):
        raise ConfigError(f"train.device: {cfg.train.device!r} is not a device; use auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps")
    if not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr: must be > 0, got {cfg.optim.lr}")
    if cfg.optim.grad_clip is not None and not cfg.optim.grad_clip > 0:
        raise ConfigError(f"optim.grad_clip: must be > 0 or null (no clipping), got {cfg.optim.grad_clip}")
    if cfg.optim.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay: must be >= 0, got {cfg.optim.weight_decay}")
    if not 0 <= cfg.optim.momentum < 1:
        raise ConfigError(f"optim.momentum: must be in [0, 1), got {cfg.optim.momentum}")
    check_decay_stability(cfg.optim)
    check_schedule(cfg)
    check_augment(cfg.augment)
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
    if cfg.benchmark.class_order_seed is not None and not 0 <= cfg.benchmark.class_order_seed < 2**32:
        raise ConfigError(f"benchmark.class_order_seed: must be in 0..2**32-1 (a numpy RandomState seed), got {cfg.benchmark.class_order_seed}")
    if order != "seeded" and cfg.benchmark.class_order_seed is not None:
        raise ConfigError("benchmark.class_order_seed: only used with class_order: seeded; set class_order: seeded or remove it")
    check_run = getattr(cfg.model, "check_run", None)  # a model's checks of settings outside its own section
    if check_run is not None:
        check_run(cfg)
    check_loggers(cfg.output.loggers)
    check_investigate(cfg)
    gradient_free = not getattr(MODELS[cfg.model.name].build, "uses_gradients", True)
    if gradient_free and cfg.regularizer.name != "none":
        raise ConfigError(f"regularizer.name: {cfg.regularizer.name!r} needs gradients, but model {cfg.model.name!r} learns without them; use regularizer: {{name: none}}")


def check_investigate(cfg: RunConfig) -> None:
    inv = cfg.investigate
    for key in ("activations_every", "receptive_fields"):
        if getattr(inv, key) < 0:
            raise ConfigError(f"investigate.{key}: must be >= 0 (0 = off), got {getattr(inv, key)}")
    if inv.update_norms_every < 1:
        raise ConfigError(f"investigate.update_norms_every: must be >= 1 (1 = every step), got {inv.update_norms_every}")
    if not 0 <= inv.active_threshold < float("inf"):  # rejects NaN and infinity too
        raise ConfigError(f"investigate.active_threshold: must be a finite number >= 0, got {inv.active_threshold}")
    if not inv.enabled():
        return
    # the investigations read one hidden layer of `model.neurons` units
    one_layer = sorted(n for n, e in MODELS.items() if "neurons" in {f.name for f in dataclasses.fields(e.config_class)})
    if not hasattr(cfg.model, "neurons"):
        raise ConfigError(f"investigate: model {cfg.model.name!r} has no single hidden layer to investigate; "
                          f"use one of {', '.join(one_layer)} or turn the investigations off")
    if inv.update_norms and not getattr(MODELS[cfg.model.name].build, "uses_gradients", True):
        raise ConfigError(f"investigate.update_norms: model {cfg.model.name!r} takes no optimizer steps; set it to false")


def check_schedule(cfg: RunConfig) -> None:
    o = cfg.optim
    if not o.warmup_epochs >= 0:
        raise ConfigError(f"optim.warmup_epochs: must be >= 0, got {o.warmup_epochs}")
    if o.schedule == "onecycle" and o.warmup_epochs:
        raise ConfigError("optim.warmup_epochs: onecycle warms up over its first 40% by itself; set warmup_epochs: 0")
    if o.schedule_span == "task" and o.warmup_epochs > cfg.train.epochs_per_task:
        raise ConfigError(f"optim.warmup_epochs: {o.warmup_epochs} exceeds the {cfg.train.epochs_per_task} epochs of a task")


def check_augment(a: AugmentConfig) -> None:
    if not 0 < a.crop_scale <= 1:
        raise ConfigError(f"augment.crop_scale: must be in (0, 1], got {a.crop_scale}")
    for key in ("flip", "erase_prob"):
        if not 0 <= getattr(a, key) <= 1:
            raise ConfigError(f"augment.{key}: a probability must be in [0, 1], got {getattr(a, key)}")
    if a.randaugment_ops < 0:
        raise ConfigError(f"augment.randaugment_ops: must be >= 0, got {a.randaugment_ops}")
    if not 0 <= a.randaugment_magnitude <= 30:
        raise ConfigError(f"augment.randaugment_magnitude: must be in 0..30 (RandAugment's 31 bins), got {a.randaugment_magnitude}")
    if not 0 <= a.jitter < 1:
        raise ConfigError(f"augment.jitter: must be in [0, 1), got {a.jitter}")
    if isinstance(a.erase_value, list) and not a.erase_value:
        raise ConfigError("augment.erase_value: the list is empty; give one value, or one per channel")


def check_loggers(names: list[str]) -> None:
    """Known logger names, each once, with their optional packages installed."""
    import importlib.util

    for i, name in enumerate(names):
        if name not in LOGGERS:
            near = difflib.get_close_matches(str(name), list(LOGGERS), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"output.loggers: unknown logger {name!r}{hint}; choose from {', '.join(sorted(LOGGERS))}")
        if name in names[:i]:
            raise ConfigError(f"output.loggers: {name!r} is listed twice")
        entry = LOGGERS[name]
        missing = [m for m in entry.requires if importlib.util.find_spec(m) is None]
        if missing:
            how = f"pip install 'sdmcl[{entry.extra}]'" if entry.extra else f"pip install {missing[0]}"
            raise ConfigError(f"output.loggers: {name!r} needs the {missing[0]} package, which is not installed; "
                              f"{how}, or remove {name!r} from output.loggers")


def read_yaml(path: str | Path) -> dict:
    """A config or experiment file as plain data, read by the strict YAML reader (strict_yaml.py)."""
    p = Path(path)
    if not p.is_file():
        if p.is_dir():
            raise ConfigError(f"{path}: is a directory, not a config file (to continue a run in it: sdmcl run --resume {path})")
        raise ConfigError(f"{path}: config file not found; see `sdmcl list` for the experiments shipped in experiments/")
    raw = load_yaml_file(p)
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; a config needs at least its data and model "
                          "(see experiments/quickstart.yaml; write {} to train every default)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level, got a {type(raw).__name__}")
    return raw


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"{text!r}: an override is key=value, e.g. model.k=5 or train.epochs_per_task=50")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{text!r}: an override is key=value with a non-empty key")
    if not value.strip():
        return key, None
    try:
        parsed = loads_yaml(value, f"override {key}")
    except YAMLFileError:
        if value.lstrip()[:1] in ("[", "{"):
            raise
        parsed = value  # on the command line, a value YAML cannot read as plain data is text
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


def expand_experiment(raw: dict, overrides: list[str] = (), grid: list[str] = (), only: list[str] = ()) -> list[tuple[str, RunConfig]]:
    """One (label, RunConfig) per variant × grid point × seed of an experiment dict (see experiment.py)."""
    from sdmcl.experiment import expand

    return [(p.label, p.cfg) for p in expand(raw, overrides, grid, only)]


def load_experiment(path: str | Path, overrides: list[str] = (), grid: list[str] = (), only: list[str] = ()) -> list[tuple[str, RunConfig]]:
    return expand_experiment(read_yaml(path), overrides, grid, only)

"""Experiment files → the list of runs: variants × grid points × seeds, command-line
overrides, and `--only` selection.

An experiment file is a run config plus optional top-level keys:

    seeds: [0, 1, 2]                       one run per seed
    variants: {label: {dotted.key: value}} one run per variant (a `model:` or `regularizer:`
                                           entry replaces the whole section)
    grid: {dotted.key: [v1, v2, ...]}      the cross product of the values, in every variant

Precedence: base config < variant < grid point < command-line override. A grid axis or an
override applies to each variant whose resolved sections have that key (`model.k` reaches the
SDMLP and Top-K variants, not the ReLU ones; `optim.*` and `regularizer.*` do not reach models
that learn without gradients). It is an error only when no variant has the key. A variant
that an axis does not reach is run once, not once per value.

Every run is labelled `variant` or `variant/point` (the point as `k=3,lr=0.1`), and the
point is part of the run's name, so grid runs land in distinguishable directories.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import json
from dataclasses import dataclass
from typing import Any

from sdmcl.config import (
    AugmentConfig,
    BenchmarkConfig,
    DataConfig,
    InvestigateConfig,
    OptimConfig,
    OutputConfig,
    RunConfig,
    TrainConfig,
    _coerce,
    _unknown_key,
    parse_config,
    parse_override,
    set_dotted,
)
from sdmcl.errors import ConfigError
from sdmcl.registry import MODELS, REGULARIZERS, load_all
from sdmcl.strict_yaml import YAMLFileError, loads_yaml

_PLAIN_SECTIONS = {"data": DataConfig, "benchmark": BenchmarkConfig, "optim": OptimConfig,
                   "train": TrainConfig, "augment": AugmentConfig, "output": OutputConfig, "investigate": InvestigateConfig}
_REGISTERED_SECTIONS = {"model": (MODELS, "sdmlp"), "regularizer": (REGULARIZERS, "none")}
_TOP_LEVEL = [f.name for f in dataclasses.fields(RunConfig)]


@dataclass
class PlannedRun:
    label: str  # variant, or variant/point
    variant: str
    point: str  # grid point label ('' when no grid axis reaches this variant)
    cfg: RunConfig


# ---------------------------------------------------------------- which keys a run has


def _uses_gradients(raw: dict) -> bool:
    name = (raw.get("model") or {}).get("name", "sdmlp") if isinstance(raw.get("model"), dict) else "sdmlp"
    entry = MODELS.get(name) if isinstance(name, str) else None
    return entry is None or getattr(entry.build, "uses_gradients", True)


def section_keys(raw: dict, section: str) -> list[str]:
    """The keys that `section` of the run `raw` accepts ([] if the section does not apply)."""
    if section in _PLAIN_SECTIONS:
        if section == "optim" and not _uses_gradients(raw):
            return []
        return [f.name for f in dataclasses.fields(_PLAIN_SECTIONS[section])]
    if section in _REGISTERED_SECTIONS:
        if section == "regularizer" and not _uses_gradients(raw):
            return []
        table, default = _REGISTERED_SECTIONS[section]
        node = raw.get(section)
        name = node.get("name", default) if isinstance(node, dict) else default
        entry = table.get(name) if isinstance(name, str) else None
        return [f.name for f in dataclasses.fields(entry.config_class)] if entry else ["name"]
    return []


def has_key(raw: dict, dotted: str) -> bool:
    parts = dotted.split(".")
    if len(parts) == 1:
        return parts[0] in _TOP_LEVEL
    if len(parts) == 2:
        return parts[1] in section_keys(raw, parts[0])
    return False


def _missing_everywhere(key: str, raws: list[dict], what: str) -> ConfigError:
    parts = key.split(".")
    if len(parts) == 2 and parts[0] in (*_PLAIN_SECTIONS, *_REGISTERED_SECTIONS):
        valid = sorted({k for r in raws for k in section_keys(r, parts[0])})
        if valid:
            err = _unknown_key(parts[1], parts[0] + ".", valid)
            return ConfigError(f"{what} {err} (no variant has it)")
        return ConfigError(f"{what} {key}: no variant uses the {parts[0]} section (their models learn without gradients)")
    return ConfigError(f"{what} {_unknown_key(key, '', _TOP_LEVEL)}")


def _first(key: str) -> bool:
    """Keys that decide which other keys exist: applied before the rest."""
    return "." not in key or key.endswith(".name")


def _apply(raw: dict, items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Set the items that `raw` has (section-choosing keys first); return those applied."""
    applied = []
    for key, value in sorted(items, key=lambda kv: not _first(kv[0])):
        if has_key(raw, key):
            set_dotted(raw, key, value)
            applied.append((key, value))
    return applied


# ---------------------------------------------------------------- grid


def parse_grid_arg(text: str) -> tuple[str, list]:
    """`key=v1,v2,...` (each value YAML: `benchmark.class_order=[0,1],[1,0]` works) → (key, values)."""
    if "=" not in text:
        raise ConfigError(f"--grid {text!r}: expected key=v1,v2,..., e.g. --grid model.k=1,5,10")
    key, rhs = text.split("=", 1)
    key = key.strip()
    try:
        values = loads_yaml("[" + rhs + "]", f"--grid {key}")
    except YAMLFileError as e:
        raise ConfigError(f"--grid {text!r}: the values are not a comma-separated list ({e}); e.g. --grid model.k=1,5,10") from None
    return key, values


def _check_grid(grid: Any) -> dict[str, list]:
    if grid is None:
        return {}
    if not isinstance(grid, dict):
        raise ConfigError("grid: expected a mapping of dotted keys to lists of values, e.g. {model.k: [1, 5, 10]}")
    for key, values in grid.items():
        if key in ("seed", "seeds"):
            raise ConfigError(f"grid.{key}: seeds are not a grid axis; use the top-level seeds: [...] list")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"grid.{key}: a value appears twice in {values!r}")
    return dict(grid)


def _value_text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def _short_names(keys: list[str]) -> dict[str, str]:
    """Last dotted part of each key where that is unambiguous, else the whole key."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


# ---------------------------------------------------------------- expansion


def expand(raw: dict, overrides: list[str] = (), grid: list[str] = (), only: list[str] = (),
           notes: list[str] | None = None) -> list[PlannedRun]:
    """Every run of an experiment dict: variants × grid points × seeds, overrides applied,
    restricted to the labels matching `only` (glob patterns). If `notes` is a list, a line is
    added to it for each override or axis that some variants do not have."""
    load_all()
    raw = json.loads(json.dumps(raw))  # deep copy, and a check that it is plain data
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a mapping at the top level")
    seeds = raw.pop("seeds", None)
    variants = raw.pop("variants", None)
    axes = _check_grid(raw.pop("grid", None))
    raw.pop("reproduces", None)  # what the file reproduces, for `sdmcl list`: no run setting
    for text in grid:  # command-line axes replace the file's axis of the same key
        key, values = parse_grid_arg(text)
        axes.update(_check_grid({key: values}))
    parsed = [parse_override(o) for o in overrides]
    cli = [(k, v) for k, v in parsed if k not in ("seeds", "seed", "name")]
    for key, value in parsed:
        if key == "seeds":
            seeds = value
        elif key == "seed":
            seeds = [value]
        elif key == "name":
            raw["name"] = value  # the prefix of every run's name
    for key, _ in cli:
        axes.pop(key, None)  # an override fixes that axis to its one value
    if seeds is None:
        seeds = [_coerce(raw.get("seed", 0), int, "seed")]
    # the name labels and prefixes the runs below: checked before it is used
    name = _coerce(raw.get("name", "run" if variants is None else "exp"), str, "name")
    seeds = _coerce(seeds if isinstance(seeds, list) else [seeds], list[int], "seeds")
    if not seeds:
        raise ConfigError("seeds: the list is empty; give at least one seed or remove the key")
    explicit = variants is not None
    if variants is None:
        variants = {name: {}}
    if not isinstance(variants, dict) or not variants:
        raise ConfigError("variants: expected a mapping of label to overrides, e.g. {sdmlp: {model.name: sdmlp}}")

    axis_keys = list(axes)
    short = _short_names(axis_keys)
    reached: set[str] = set()
    missed: dict[str, list[str]] = {}  # key -> variants it does not reach
    variant_raws = []
    plans: list[PlannedRun] = []
    for label, changes in variants.items():
        label = str(label)
        if not isinstance(changes, dict):
            raise ConfigError(f"variants.{label}: expected a mapping of dotted keys to values")
        base = json.loads(json.dumps(raw))
        for key, value in changes.items():
            if key in _REGISTERED_SECTIONS:
                base[key] = value  # a whole section replaces the base one
            else:
                set_dotted(base, key, value)
        base.setdefault("name", label)
        if len(variants) > 1:
            base["name"] = f"{name}-{label}"
        variant_raws.append(base)
        seen_points = set()
        for values in itertools.product(*(axes[k] for k in axis_keys)) if axis_keys else [()]:
            run_raw = json.loads(json.dumps(base))
            point_items = _apply(run_raw, list(zip(axis_keys, values)))
            applied_cli = _apply(run_raw, cli)  # command-line overrides win over grid and variant
            reached.update(k for k, _ in point_items + applied_cli)
            got = {k for k, _ in point_items + applied_cli}
            for key in [k for k, _ in cli] + axis_keys:
                if key not in got and label not in missed.setdefault(key, []):
                    missed[key].append(label)
            point_id = json.dumps(point_items, sort_keys=True)
            if point_id in seen_points:
                continue  # no axis that differs here reaches this variant
            seen_points.add(point_id)
            order = {k: i for i, k in enumerate(axis_keys)}
            point = ",".join(f"{short[k]}={_value_text(v)}" for k, v in sorted(point_items, key=lambda kv: order[kv[0]]))
            if point:
                run_raw["name"] = f"{run_raw['name']}-{point}"
            run_label = (f"{label}/{point}" if point else label) if explicit else (point or label)
            for seed in seeds:
                try:
                    cfg = parse_config({**run_raw, "seed": seed})
                except ConfigError as e:
                    where = f"variant {label!r}" if len(variants) > 1 else ""
                    if point:
                        where = f"{where} ({point})" if where else f"grid point {point}"
                    raise ConfigError(f"{where}: {e}" if where else str(e)) from None
                plans.append(PlannedRun(run_label, label, point, cfg))
    for key, _ in cli:
        if key not in reached:
            raise _missing_everywhere(key, variant_raws, "override")
    for key in axis_keys:
        if key not in reached:
            raise _missing_everywhere(key, variant_raws, "grid axis")
    if only:
        plans = select(plans, only)
    if notes is not None:
        selected = {p.variant for p in plans}
        for key, labels in missed.items():
            labels = [v for v in labels if v in selected]
            if labels:
                what = "override" if key in dict(cli) else "grid axis"
                notes.append(f"{what} {key} does not apply to {', '.join(labels)} (no such key there)")
    return plans


def load(path, overrides: list[str] = (), grid: list[str] = (), only: list[str] = ()) -> tuple[list[tuple[str, RunConfig]], list[str]]:
    """(label, RunConfig) of every run of an experiment file, and notes on partial overrides."""
    from sdmcl.config import read_yaml

    notes: list[str] = []
    plans = expand(read_yaml(path), overrides, grid, only, notes)
    return [(p.label, p.cfg) for p in plans], notes


def _names_of(plan: PlannedRun) -> set[str]:
    names = {plan.label, plan.variant}
    if plan.point:
        names.add(plan.point)
        names.update(plan.point.split(","))  # each key=value of the point
    return names


def select(plans: list[PlannedRun], patterns: list[str]) -> list[PlannedRun]:
    """The runs whose label, variant, grid point or one of its key=value parts matches a glob."""
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for p in plans for n in _names_of(p)):
            labels = ", ".join(dict.fromkeys(p.label for p in plans))
            hint = " (key=value overrides go before --only)" if "=" in pattern and "." in pattern.split("=")[0] else ""
            raise ConfigError(f"--only {pattern!r}: matches no run{hint}; the runs are: {labels}")
    return [p for p in plans if any(fnmatch.fnmatchcase(n, pat) for n in _names_of(p) for pat in patterns)]

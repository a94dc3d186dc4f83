"""Experiment expansion: overrides per variant, grids, --only."""

from pathlib import Path

import pytest

from sdmcl.config import load_experiment
from sdmcl.errors import ConfigError
from sdmcl.experiment import expand, parse_grid_arg

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "name": "exp",
    "seeds": [0, 1],
    "model": {"name": "sdmlp", "neurons": 40, "k": 4},
    "variants": {"sdm": {}, "relu": {"model": {"name": "relu_mlp", "neurons": 40}},
                 "fly": {"model": {"name": "fly", "kenyon_cells": 40}, "optim": {}}},
}


def test_readme_example_applies_each_override_where_the_key_exists():
    runs = load_experiment(ROOT / "experiments/split_fashion_mnist.yaml",
                           ["model.k=5", "train.epochs_per_task=50", "seeds=[0,1,2]"])
    assert len(runs) == 21 * 3
    ks = {label: getattr(cfg.model, "k", None) for label, cfg in runs}
    assert ks["sdmlp-1k"] == ks["sdmlp-10k-k1"] == ks["topk-1k"] == ks["sdmlp-1k-ewc"] == 5
    assert ks["relu-1k"] is None and ks["fly-1k"] is None and ks["dendrites"] is None
    assert {cfg.train.epochs_per_task for _, cfg in runs} == {50}
    assert sorted({cfg.seed for _, cfg in runs}) == [0, 1, 2]


def test_notes_name_the_variants_an_override_does_not_reach():
    notes = []
    expand(BASE, ["model.k=5"], grid=["optim.lr=0.1,0.2"], notes=notes)
    assert notes == ["override model.k does not apply to relu, fly (no such key there)",
                     "grid axis optim.lr does not apply to fly (no such key there)"]
    notes = []
    expand(BASE, ["model.k=5"], only=["sdm"], notes=notes)
    assert notes == []


def test_override_that_no_variant_has_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"model\.kk: unknown key; did you mean 'model\.k'.*no variant has it"):
        expand(BASE, ["model.kk=3"])
    with pytest.raises(ConfigError, match="modle"):
        expand(BASE, ["modle.k=3"])


def test_optimizer_and_regularizer_keys_skip_gradient_free_models():
    runs = expand(BASE, ["optim.lr=0.3", "regularizer.name=l2"])
    by = {p.variant: p.cfg for p in runs}
    assert by["sdm"].optim.lr == 0.3 and by["relu"].regularizer.name == "l2"
    assert by["fly"].regularizer.name == "none"  # fly learns without gradients


def test_section_choosing_override_is_applied_first():
    runs = expand({"model": {"name": "sdmlp"}}, ["model.dropout=0.25", "model.name=relu_mlp"])
    assert runs[0].cfg.model.name == "relu_mlp" and runs[0].cfg.model.dropout == 0.25


def test_grid_cross_product_labels_and_names():
    raw = {**BASE, "grid": {"model.k": [2, 3]}}
    runs = expand(raw, grid=["optim.lr=0.1,0.2"])
    sdm = [(p.label, p.cfg.seed) for p in runs if p.variant == "sdm"]
    assert sdm == [("sdm/k=2,lr=0.1", 0), ("sdm/k=2,lr=0.1", 1), ("sdm/k=2,lr=0.2", 0), ("sdm/k=2,lr=0.2", 1),
                   ("sdm/k=3,lr=0.1", 0), ("sdm/k=3,lr=0.1", 1), ("sdm/k=3,lr=0.2", 0), ("sdm/k=3,lr=0.2", 1)]
    # relu has no k: one run per lr, not two identical ones; fly has neither: run once per seed
    assert [p.label for p in runs if p.variant == "relu"] == ["relu/lr=0.1"] * 2 + ["relu/lr=0.2"] * 2
    assert [p.label for p in runs if p.variant == "fly"] == ["fly", "fly"]
    names = {p.cfg.name for p in runs}
    assert "exp-sdm-k=3,lr=0.2" in names and len(names) == 4 + 2 + 1
    assert len({p.cfg.stamp() for p in runs}) == len(runs)


def test_grid_without_variants_labels_by_point_and_override_fixes_an_axis():
    raw = {"name": "g", "model": {"name": "sdmlp", "neurons": 40}, "grid": {"model.k": [1, 2, 3]}}
    assert [p.label for p in expand(raw)] == ["k=1", "k=2", "k=3"]
    fixed = expand(raw, ["model.k=5"])
    assert [(p.label, p.cfg.model.k) for p in fixed] == [("g", 5)]


def test_grid_values_parse_as_yaml_lists():
    assert parse_grid_arg("benchmark.class_order=[0,1,2,3],[3,2,1,0]") == (
        "benchmark.class_order", [[0, 1, 2, 3], [3, 2, 1, 0]])
    assert parse_grid_arg("optim.name=sgd,adam") == ("optim.name", ["sgd", "adam"])


@pytest.mark.parametrize("raw, grid, message", [
    ({"grid": {"model.k": 3}}, [], "grid.model.k: expected a non-empty list"),
    ({"grid": {"seed": [1, 2]}}, [], "seeds are not a grid axis"),
    ({"grid": {"model.k": [1, 1]}}, [], "appears twice"),
    ({}, ["model.k"], "expected key=v1,v2"),
    ({}, ["model.kk=1,2"], "grid axis model.kk: unknown key"),
])
def test_bad_grids_are_one_line_errors(raw, grid, message):
    with pytest.raises(ConfigError, match=message) as e:
        expand(raw, grid=grid)
    assert "\n" not in str(e.value)


def test_only_selects_by_variant_point_or_value():
    raw = {**BASE, "grid": {"model.k": [2, 3]}}
    assert {p.label for p in expand(raw, only=["rel*"])} == {"relu"}
    assert {p.label for p in expand(raw, only=["k=3"])} == {"sdm/k=3"}
    assert {p.label for p in expand(raw, only=["sdm/k=2", "fly"])} == {"sdm/k=2", "fly"}
    with pytest.raises(ConfigError, match=r"--only 'model.k=3': matches no run \(key=value overrides go before --only\); the runs are: sdm/k=2, sdm/k=3, relu, fly"):
        expand(raw, only=["model.k=3"])


def test_variant_errors_name_the_variant_and_point():
    raw = {**BASE, "grid": {"model.k": [2, 50]}}
    with pytest.raises(ConfigError, match=r"variant 'sdm' \(k=50\): model.k: must satisfy"):
        expand(raw)

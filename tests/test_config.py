"""Typed config: defaults, overrides, one clear error per mistake."""

import pytest

from sdmcl.config import expand_experiment, parse_config
from sdmcl.errors import ConfigError


def test_defaults_and_declared_model_defaults():
    cfg = parse_config({})
    assert cfg.model.name == "sdmlp" and cfg.model.k == 10 and cfg.model.k_approach == "gaba_switch"
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.05 and cfg.train.batch_size == 128


def test_stamp_is_stable_and_ignores_output():
    a = parse_config({"model": {"k": 5}})
    b = parse_config({"model": {"k": 5}, "output": {"dir": "elsewhere"}})
    c = parse_config({"model": {"k": 6}})
    assert a.stamp() == b.stamp() != c.stamp()


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"modle": {}}, "modle: unknown key; did you mean 'model'"),
        ({"model": {"neurnos": 10}}, "model.neurnos: unknown key; did you mean 'model.neurons'"),
        ({"model": {"k": "ten"}}, "model.k: expected int"),
        ({"model": {"k": 1000, "neurons": 1000}}, "model.k: must satisfy"),
        ({"model": {"k": 0}}, "model.k: must satisfy"),
        ({"model": {"k_approach": "gaba"}}, "model.k_approach"),
        ({"model": {"name": "sdmpl"}}, "did you mean 'sdmlp'"),
        ({"optim": {"lr": 0}}, "optim.lr: must be > 0"),
        ({"optim": {"name": "adamx"}}, "optim.name"),
        ({"train": {"epochs_per_task": 0}}, "train.epochs_per_task: must be >= 1"),
        ({"benchmark": {"class_order": []}}, "benchmark.class_order: the list is empty"),
        ({"benchmark": {"class_order": "seeded"}}, "class_order_seed: required"),
        ({"benchmark": {"class_order": [0, 1, 2], "classes_per_task": 2}}, "does not divide"),
        ({"train": {"batch_size": True}}, "train.batch_size: expected int"),
    ],
)
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert key in str(e.value)
    assert "\n" not in str(e.value)


def test_experiment_variants_seeds_and_overrides():
    raw = {"name": "exp", "seeds": [0, 1], "model": {"name": "sdmlp", "k": 5},
           "variants": {"a": {}, "b": {"model": {"name": "relu_mlp"}}}}
    runs = expand_experiment(raw, ["train.epochs_per_task=3"])
    assert [(label, c.seed, c.model.name) for label, c in runs] == [("a", 0, "sdmlp"), ("a", 1, "sdmlp"), ("b", 0, "relu_mlp"), ("b", 1, "relu_mlp")]
    assert all(c.train.epochs_per_task == 3 for _, c in runs)
    assert runs[0][1].model.k == 5
    assert len(expand_experiment(raw, ["seeds=[4]"])) == 2


def test_override_must_be_key_value():
    with pytest.raises(ConfigError, match="key=value"):
        expand_experiment({}, ["model.k"])

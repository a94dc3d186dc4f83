"""The command line: list, run with overrides, one-line errors."""

from pathlib import Path

import yaml

from sdmcl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_list_names_everything(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("sdmlp", "relu_mlp", "topk_mlp", "gaba_switch", "linear_decay_mask", "sgdm", "fashion-mnist", "quickstart"):
        assert word in out


def test_run_experiment_prints_per_task_and_table(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "cli", "data": {"source": "digits"},
        "model": {"name": "sdmlp", "neurons": 50, "k": 3, "gaba_switch_activations": 500},
        "train": {"epochs_per_task": 2, "batch_size": 64},
        "output": {"dir": str(tmp_path / "runs"), "plots": False},
        "variants": {"sdm": {}, "relu": {"model": {"name": "relu_mlp", "neurons": 50}}},
    }))
    assert main(["run", str(cfg), "--no-progress", "optim.lr=0.1"]) == 0
    out = capsys.readouterr().out
    assert "after task 5/5" in out  # per-task lines
    assert "[1/2] relu (seed 0): finished, final avg acc" in out and "[2/2] sdm (seed 0): finished" in out
    assert "final avg acc %" in out  # the comparison table
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_bad_override_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    out_dir = tmp_path / "runs"
    code = main(["run", str(ROOT / "experiments/quickstart.yaml"), f"output.dir={out_dir}", "model.k=1000"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "model.k" in err and "Traceback" not in err
    assert not out_dir.exists()


def test_missing_config_file(capsys):
    assert main(["run", "no/such/file.yaml"]) == 2
    assert "no/such/file.yaml: config file not found" in capsys.readouterr().err


def test_every_shipped_experiment_validates():
    from sdmcl.stages import load_plan

    files = sorted((ROOT / "experiments").glob("*.yaml"))
    assert len(files) >= 25
    for path in files:
        plan = load_plan(path)
        assert plan.all_runs(), path
        ours = ("quickstart", "fly_split_fashion_mnist", "split_fashion_mnist_short", "compare_split_fashion_mnist_short",
                "convmixer_fashion_mnist", "gaba_counting_split_fashion_mnist", "regularizer_normalisations_split_fashion_mnist_short")
        assert plan.reproduces or path.stem in ours, f"{path.name}: say what it reproduces"


def test_pretraining_runs_are_shared_between_files():
    """Files that start from the ImageNet32 pretraining use the very runs of its own file."""
    import json

    from sdmcl.config import result_identity
    from sdmcl.stages import load_plan

    def identity(cfg):  # what names a run directory: the run name and everything in its stamp
        return json.dumps([cfg.name, result_identity(cfg.to_dict())], sort_keys=True)

    pretrain = load_plan(ROOT / "experiments/imagenet32_embeddings_pretrain.yaml").all_runs()
    base = {identity(r.cfg) for r in pretrain}
    names = {r.cfg.name for r in pretrain}
    for name in ("table1_split_cifar10_embeddings", "split_cifar100_embeddings", "oracle_cifar10_embeddings",
                 "ablation_optimizers_split_cifar10_embeddings", "sweep_regularizers_split_cifar10_embeddings"):
        plan = load_plan(ROOT / f"experiments/{name}.yaml")
        used = {identity(r.cfg) for r in plan.select() if r.stage == "pretrain"}
        assert used and used <= base, name
        for r in plan.select():
            if r.starts_from is not None:
                assert Path(r.cfg.init_from).name.rsplit("-", 1)[0] in names or any(
                    r.cfg.init_from.startswith(f"runs/{n}-") for n in names), (name, r.label, r.cfg.init_from)


def test_table1_has_every_row_in_five_orders():
    from sdmcl.stages import load_plan

    plan = load_plan(ROOT / "experiments/table1_split_cifar10_embeddings.yaml")
    orders = {s: {(r.cfg.benchmark.class_order, r.cfg.benchmark.class_order_seed) for r in plan.runs[s]} for s in plan.stages[1:]}
    assert orders == {"natural": {("natural", None)}, "order3": {("seeded", 3)}, "order15": {("seeded", 15)},
                      "order27": {("seeded", 27)}, "order97": {("seeded", 97)}}
    rows = [r for r in plan.runs["natural"]]
    by_label = {r.label: r for r in rows}
    assert by_label["sdmlp-10k"].cfg.model.neurons == 10000 and by_label["sdmlp-1k"].cfg.model.neurons == 1000
    assert by_label["sdmlp-1k-ewc"].cfg.optim.name == "sgdm" and by_label["relu-1k-ewc"].cfg.optim.name == "sgd"
    assert by_label["relu-1k-dropout"].cfg.model.dropout == 0.03
    assert all(r.cfg.train.epochs_per_task == 2000 for r in rows if r.cfg.model.name != "fly")


def test_messages_suggest_only_flags_that_exist():
    """Every --flag written in sdmcl's messages and help is an option of some command."""
    import argparse
    import ast
    import re

    from sdmcl.cli import build_parser

    known = set()
    parsers = [build_parser()]
    while parsers:
        p = parsers.pop()
        for action in p._actions:
            known.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    used = {}
    for path in (ROOT / "src/sdmcl").rglob("*.py"):
        if path.name == "provenance.py":  # git's own options
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)  # may name other tools' flags
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", node.value):
                    used.setdefault(flag, path.name)
    assert used, "the scan found no flags at all"
    unknown = {f: where for f, where in used.items() if f not in known}
    assert not unknown, unknown

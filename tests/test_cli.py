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
    from sdmcl.config import load_experiment

    files = sorted((ROOT / "experiments").glob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        assert load_experiment(path), path


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

"""Experiment files with stages: a pretraining stage, then continual runs that start from it."""

import subprocess

import pytest
import torch
import yaml

from sdmcl.errors import ConfigError
from sdmcl.stages import build_plan, load_plan
from sdmcl.train.checkpoint import load_checkpoint
from sdmcl.train.rundir import run_dir_for

from test_resume import assert_identical, outputs, sdmcl

SDM = {"name": "sdmlp", "neurons": 64, "k": 4, "gaba_switch_activations": 1500}


def chain(tmp_path, **continual):
    return {
        "name": "chain",
        "data": {"source": "digits"},
        "model": SDM,
        "optim": {"name": "sgd", "lr": 0.2},
        "train": {"epochs_per_task": 2, "batch_size": 64, "threads": 1},
        "output": {"dir": str(tmp_path / "runs"), "checkpoint_every": 1, "plots": False, "progress": False},
        "stages": {
            # 1,438 training images / 64 = 23 steps per epoch: 23 steps per pretraining run
            "pretrain": {"benchmark": {"joint": True}, "train": {"epochs_per_task": 1},
                         "variants": {"sdm": {}, "relu": {"model": {"name": "relu_mlp", "neurons": 64}}}},
            "continual": {"benchmark": {"num_tasks": 3}, "init_from": {"stage": "pretrain", "variant": "sdm"},
                          "variants": {"sdm": {}}, **continual},
        },
    }


def write(tmp_path, raw, name="chain.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_plan_resolves_init_from_to_the_pretraining_run_directory(tmp_path):
    plan = build_plan(chain(tmp_path))
    assert plan.stages == ["pretrain", "continual"]
    (pre_sdm, pre_relu), (cont,) = plan.runs["pretrain"], plan.runs["continual"]
    assert cont.cfg.init_from == str(run_dir_for(pre_sdm.cfg))
    assert cont.starts_from == pre_sdm.key
    assert [r.cfg.name for r in plan.all_runs()] == ["chain-pretrain-sdm", "chain-pretrain-relu", "chain-continual"]
    assert plan.runs["pretrain"][0].cfg.train.epochs_per_task == 1 and cont.cfg.train.epochs_per_task == 2
    # --stage continual runs only the pretraining run it starts from
    assert [r.label for r in plan.select("continual")] == ["sdm", "sdm"]
    assert [r.stage for r in plan.select("continual")] == ["pretrain", "continual"]
    # per-stage overrides; shared ones reach every stage
    plan = build_plan(chain(tmp_path), ["continual.train.epochs_per_task=5", "optim.lr=0.1"])
    assert plan.runs["continual"][0].cfg.train.epochs_per_task == 5 and plan.runs["pretrain"][0].cfg.train.epochs_per_task == 1
    assert all(r.cfg.optim.lr == 0.1 for r in plan.all_runs())


@pytest.mark.parametrize("change, message", [
    ({"init_from": {"stage": "nope"}}, "'nope' is not an earlier stage"),
    ({"init_from": {"stage": "pretrain"}}, "has variants sdm, relu; name one"),
    ({"init_from": {"stage": "pretrain", "variant": "gone"}}, "has no variant 'gone'"),
    ({"init_from": {"stage": "pretrain", "variant": "relu"}}, "whose model differs: model.bias (True vs False)"),
    ({"model": {**SDM, "k": 5}}, "model.k (4 vs 5)"),
    ({"init_from": {"stage": "pretrain", "varaint": "sdm"}}, "expected {stage: NAME"),
])
def test_bad_references_are_caught_before_anything_runs(tmp_path, change, message):
    with pytest.raises(ConfigError) as e:
        build_plan(chain(tmp_path, **change))
    assert message in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_stage_names_must_not_shadow_config_keys(tmp_path):
    raw = chain(tmp_path)
    raw["stages"] = {"train": raw["stages"]["pretrain"]}
    with pytest.raises(ConfigError, match="stages.train: a stage name"):
        build_plan(raw)


def test_included_file_stage_shares_run_directories_and_runs_only_what_is_needed(tmp_path):
    pretrain = {k: v for k, v in chain(tmp_path).items() if k != "stages"}
    pretrain.update(name="shared-pretrain", benchmark={"joint": True},
                    variants={"sdm": {}, "relu": {"model": {"name": "relu_mlp", "neurons": 64}}})
    write(tmp_path, pretrain, "pretrain.yaml")
    raw = chain(tmp_path)
    raw["stages"]["pretrain"] = {"file": "pretrain.yaml"}
    plan = load_plan(write(tmp_path, raw))
    alone = load_plan(tmp_path / "pretrain.yaml")
    assert [run_dir_for(r.cfg) for r in plan.runs["pretrain"]] == [run_dir_for(r.cfg) for r in alone.all_runs()]
    # the included stage runs only the pretraining its continual runs start from
    assert [(r.stage, r.label) for r in plan.select()] == [("pretrain", "sdm"), ("continual", "sdm")]


def test_two_stage_chain_resumes_in_its_second_stage_after_sigkill(tmp_path):
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "kill"
    ref_dir.mkdir(), kill_dir.mkdir()
    ref_cfg, kill_cfg = write(ref_dir, chain(ref_dir)), write(kill_dir, chain(kill_dir))
    done = sdmcl(["run", str(ref_cfg), "--no-progress"])
    assert done.returncode == 0, done.stderr
    # the fault counts steps per run: 23 per pretraining run, then 5 per continual epoch, so
    # step 28 is in the continual run, second epoch of the third task
    killed = sdmcl(["run", str(kill_cfg), "--no-progress"], fault="step:28")
    assert killed.returncode == -9, killed.stderr
    plan = load_plan(kill_cfg)
    pre_dir, cont_dir = (run_dir_for(plan.runs[s][0].cfg) for s in ("pretrain", "continual"))
    assert (pre_dir / "summary.json").is_file() and not (cont_dir / "summary.json").exists()
    assert load_checkpoint(cont_dir / "checkpoints" / "last.pt")["position"]["epochs_done"] == 5
    resumed = sdmcl(["run", str(kill_cfg), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr
    assert "already finished" in resumed.stdout and "resuming" in resumed.stdout
    ref_plan = load_plan(ref_cfg)
    for stage in ("pretrain", "continual"):
        for mine, ref in zip(plan.runs[stage], ref_plan.runs[stage]):
            # the stamps and config ids differ only because init_from names another directory
            (a, *rest_a, sa), (b, *rest_b, sb) = outputs(run_dir_for(mine.cfg)), outputs(run_dir_for(ref.cfg))
            sa.pop("stamp"), sb.pop("stamp"), sa.pop("config_id"), sb.pop("config_id")
            assert_identical((a, *rest_a, sa), (b, *rest_b, sb))
    # the continual run started from the pretrained weights (not from scratch): the address
    # rows differ from a fresh model's but the head was reset to the continual classes
    pre = load_checkpoint(pre_dir / "model.pt")["model"]
    cont = load_checkpoint(cont_dir / "model.pt")["model"]
    assert set(pre) == set(cont)


def test_compare_refuses_a_stage_file(tmp_path, capsys):
    from sdmcl.cli import main

    assert main(["compare", str(write(tmp_path, chain(tmp_path)))]) == 2
    assert "has stages" in capsys.readouterr().err


def test_unfinished_source_is_refused(tmp_path):
    from sdmcl.stages import run_plan

    plan = build_plan(chain(tmp_path))
    plan.select = lambda stage=None: plan.runs["continual"]  # as if the pretraining were left to another process
    with pytest.raises(Exception, match="has not finished"):
        run_plan(plan, progress=False)


def test_a_run_without_model_section_takes_the_model_it_starts_from(tmp_path):
    raw = chain(tmp_path)
    del raw["model"]
    raw["stages"]["pretrain"]["variants"] = {"sdm": {"model": SDM}, "relu": {"model": {"name": "relu_mlp", "neurons": 64}}}
    raw["stages"]["continual"]["variants"] = {
        "sdm": {},
        "relu-dropout": {"init_from": {"stage": "pretrain", "variant": "relu"}, "model.dropout": 0.25},
    }
    plan = build_plan(raw)
    sdm, relu = plan.runs["continual"]
    assert sdm.cfg.model == plan.runs["pretrain"][0].cfg.model
    assert relu.cfg.model.name == "relu_mlp" and relu.cfg.model.neurons == 64 and relu.cfg.model.dropout == 0.25
    assert relu.starts_from == plan.runs["pretrain"][1].key

"""What a run started from is the checkpoint's content, not its path: a replaced `init_from`
file is noticed on reuse and on resume, and tables group runs by the content they started from."""

import hashlib
import json
import shutil

import torch

from hostile_common import cli, snapshot, tiny, write_config
from sdmcl.report import collect_runs, group_runs


def pretrain(tmp_path, seed: int):
    """A finished joint pretraining run (digits, 10 classes); returns its model.pt."""
    cfg = tiny(tmp_path / "pre", benchmark={"joint": True, "num_tasks": None}, seed=seed)
    code, out, err = cli("run", write_config(tmp_path / f"pre{seed}.yaml", cfg))
    assert code == 0, err
    (model,) = [p for p in (tmp_path / "pre").glob("*/model.pt") if json.loads((p.parent / "summary.json").read_text())["seed"] == seed]
    return model


def sha16(path) -> str:
    """What a run started from, computed here from the checkpoint's tensors: sha256 over
    each tensor's name, dtype, shape and bytes, then the epochs it was trained."""
    ckpt = torch.load(path, weights_only=True)
    h = hashlib.sha256()
    for name, t in sorted(ckpt["model"].items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.contiguous().numpy().tobytes())
    h.update(f"epochs_trained|{ckpt['epochs_trained']}".encode())
    return h.hexdigest()[:16]


def continual(tmp_path, init_from, name="cont.yaml", **sections):
    return write_config(tmp_path / name, tiny(tmp_path / "runs", init_from=str(init_from), **sections))


def test_a_replaced_init_from_file_is_not_reused_as_if_unchanged(tmp_path):
    a, b = pretrain(tmp_path, 0), pretrain(tmp_path, 1)
    assert sha16(a) != sha16(b)
    start = tmp_path / "pretrained.pt"
    shutil.copyfile(a, start)
    path = continual(tmp_path, start)
    code, out, err = cli("run", path)
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["init_from_content"] == sha16(a)
    assert cli("run", path)[0] == 0  # unchanged file: the finished run is reused
    # the same path now holds another pretraining's weights: reusing would table results of the old start
    shutil.copyfile(b, start)
    before = snapshot(run_dir)
    code, out, err = cli("run", path)
    assert code == 2 and err.count("\n") == 1, err
    assert f"content {sha16(a)}" in err and f"now {sha16(b)}" in err and "--rerun" in err
    assert snapshot(run_dir) == before
    code, out, err = cli("run", path, "--rerun")
    assert code == 0, err
    assert json.loads((run_dir / "summary.json").read_text())["init_from_content"] == sha16(b)


def test_resume_refuses_a_start_that_changed_mid_run(tmp_path, monkeypatch):
    a, b = pretrain(tmp_path, 0), pretrain(tmp_path, 1)
    start = tmp_path / "pretrained.pt"
    shutil.copyfile(a, start)
    path = continual(tmp_path, start, train={"epochs_per_task": 2}, output={"checkpoint_every": 1})
    monkeypatch.setenv("SDMCL_FAULT", "step:8:SIGINT")
    code, out, err = cli("run", path)
    monkeypatch.delenv("SDMCL_FAULT")
    assert code == 130, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not (run_dir / "summary.json").exists()
    shutil.copyfile(b, start)
    before = snapshot(run_dir)
    code, out, err = cli("run", "--resume", run_dir)
    assert code == 2 and err.count("\n") == 1, err
    assert "has changed since" in err and "resuming would mix two starting models" in err and "--rerun" in err
    assert snapshot(run_dir) == before
    shutil.copyfile(a, start)  # the original file back: the run resumes and finishes
    code, out, err = cli("run", "--resume", run_dir)
    assert code == 0, err
    assert json.loads((run_dir / "summary.json").read_text())["init_from_content"] == sha16(a)


def test_tables_group_runs_by_the_checkpoint_content_they_started_from(tmp_path):
    a, b = pretrain(tmp_path, 0), pretrain(tmp_path, 1)
    here, there, other = tmp_path / "here.pt", tmp_path / "elsewhere" / "copy.pt", tmp_path / "other.pt"
    there.parent.mkdir()
    shutil.copyfile(a, here)
    shutil.copyfile(a, there)
    shutil.copyfile(b, other)
    for i, (start, seed) in enumerate(((here, 0), (there, 1), (other, 0))):
        code, out, err = cli("run", continual(tmp_path, start, name=f"c{i}.yaml", seed=seed))
        assert code == 0, err
    found, problems = collect_runs([str(tmp_path / "runs")])
    assert len(found) == 3 and not problems
    groups, duplicates = group_runs(found, over=("seed",))
    assert not duplicates
    # the two runs that started from the same bytes (at two paths) are one row of 2 seeds;
    # the run that started from other weights is a row of its own
    sizes = sorted(len(g.runs) for g in groups)
    assert sizes == [1, 2], [(g.label, len(g.runs)) for g in groups]
    (pair,) = [g for g in groups if len(g.runs) == 2]
    assert {r.summary["seed"] for r in pair.runs} == {0, 1}
    assert {r.summary["init_from_content"] for r in pair.runs} == {sha16(a)}

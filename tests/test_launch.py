"""Launching many runs: identity (stamp), provenance, reuse across code versions, locks,
shards, parallel processes, Ray."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sdmcl import provenance
from sdmcl.cli import main
from sdmcl.config import load_experiment, parse_config
from sdmcl.errors import ConfigError
from sdmcl.launch import divide_threads, parse_shard, take_shard
from sdmcl.train.rundir import RunDir, run_dir_for

ROOT = Path(__file__).resolve().parents[1]
VARYING = {"train_seconds", "seconds_per_epoch", "provenance"}  # times and where it ran


def write_experiment(tmp_path: Path, epochs: int = 2, seeds=(0, 1), name="exp", **extra) -> Path:
    raw = {
        "name": name, "seeds": list(seeds), "data": {"source": "digits"},
        "benchmark": {"num_tasks": 3},
        "model": {"name": "sdmlp", "neurons": 32, "k": 3, "gaba_switch_activations": 500},
        "optim": {"lr": 0.1},
        "train": {"epochs_per_task": epochs, "batch_size": 64},
        "output": {"dir": str(tmp_path / "runs"), "plots": False},
        "variants": {"sdm": {}, "relu": {"model": {"name": "relu_mlp", "neurons": 32}}},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def results(out_dir: Path) -> dict:
    """{run directory name: summary without times and provenance}"""
    return {d.name: {k: v for k, v in json.loads((d / "summary.json").read_text()).items() if k not in VARYING}
            for d in sorted(out_dir.iterdir())}


def sessions(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "provenance.json").read_text())["sessions"]


def sdmcl_process(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("SDMCL_FAULT", None)
    return subprocess.Popen([sys.executable, "-m", "sdmcl.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


# ---------------------------------------------------------------- run identity


def test_stamp_ignores_threads_eval_chunks_and_where_pinned_data_lies():
    base = {"data": {"source": "fashion-mnist"}, "model": {"k": 5}}
    a = parse_config({**base, "train": {"threads": 1}})
    b = parse_config({"data": {"source": "fashion-mnist", "path": "/mnt/elsewhere/fmnist", "data_dir": "/tmp/x"},
                      "model": {"k": 5}, "train": {"threads": 8, "eval_batch_size": 64}})
    assert a.stamp() == b.stamp()
    assert a.stamp() != parse_config({**base, "train": {"epochs_per_task": 3}}).stamp()


def test_embedding_stamp_follows_the_files_content_not_their_path(tmp_path, monkeypatch):
    from sdmcl.data import fingerprint

    monkeypatch.setenv("SDMCL_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "_memo", {})
    hashed = []
    real = fingerprint._hash_file
    monkeypatch.setattr(fingerprint, "_hash_file", lambda p: hashed.append(p.name) or real(p))
    a = tmp_path / "a"
    a.mkdir()
    g = torch.Generator().manual_seed(0)
    torch.save((torch.randn(20, 8, generator=g), torch.arange(20) % 4), a / "train.pt")
    torch.save((torch.randn(8, 8, generator=g), torch.arange(8) % 4), a / "test.pt")
    (a / "notes.txt").write_text("not read by the loader")
    b = tmp_path / "copy"
    shutil.copytree(a, b)

    def stamp(path):
        return parse_config({"data": {"source": "embeddings", "path": str(path)}}).stamp()

    assert stamp(a) == stamp(b)
    assert sorted(hashed) == ["test.pt", "test.pt", "train.pt", "train.pt"]  # notes.txt is not data
    # a new process (empty memo) reads the hashes from the cache instead of the files
    fingerprint._memo.clear()
    hashed.clear()
    assert stamp(a) == stamp(b) and hashed == []
    assert (tmp_path / "cache" / fingerprint.CACHE_NAME).is_file()
    # other content, same path: another stamp (the changed file alone is hashed again)
    torch.save((torch.randn(20, 8, generator=g), torch.arange(20) % 4), b / "train.pt")
    assert stamp(b) != stamp(a) and hashed == ["train.pt"]


def test_missing_embedding_path_is_a_clear_error(tmp_path):
    from sdmcl.errors import DataError

    cfg = parse_config({"data": {"source": "embeddings", "path": str(tmp_path / "nope")}})
    with pytest.raises(DataError, match="does not exist; set data.path"):
        cfg.stamp()


# ---------------------------------------------------------------- provenance


def test_summary_and_run_dir_record_provenance(tmp_path, capsys):
    exp = write_experiment(tmp_path, seeds=[0])
    assert main(["run", str(exp), "--no-progress", "--only", "relu"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    prov = json.loads((run_dir / "summary.json").read_text())["provenance"]
    for key in ("sdmcl_version", "git_commit", "git_dirty", "torch", "numpy", "python", "host", "command",
                "start", "end", "first_start"):
        assert key in prov, key
    assert prov["sdmcl_version"] == "0.1.0" and prov["torch"] == torch.__version__
    assert prov["status"] == "finished" and prov["sessions"] == 1 and prov["end"] >= prov["start"]
    if (ROOT / ".git").exists() and shutil.which("git"):
        assert re.fullmatch(r"[0-9a-f]{40}", prov["git_commit"]) and isinstance(prov["git_dirty"], bool)
    (session,) = sessions(run_dir)
    assert session == {k: v for k, v in prov.items() if k not in ("first_start", "sessions")}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_of_a_checkout(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text("a = 1\n")
    (tmp_path / "README").write_text("x\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert provenance.git_state(tmp_path) == {"git_commit": head, "git_dirty": False, "source_diff_sha256": None}
    (tmp_path / "README").write_text("docs do not change results\n")
    assert provenance.git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "src" / "m.py").write_text("a = 2\n")
    first = provenance.git_state(tmp_path)
    assert first["git_dirty"] is True and first["source_diff_sha256"]
    (tmp_path / "src" / "new.py").write_text("b = 1\n")  # an untracked source file counts
    second = provenance.git_state(tmp_path)
    assert second["git_dirty"] and second["source_diff_sha256"] != first["source_diff_sha256"]
    assert provenance.git_state(tmp_path / "src") == {}  # not the top of a checkout


def test_run_from_another_commit_is_reused_with_a_note_and_rerun_trains_again(tmp_path, capsys, monkeypatch):
    exp = write_experiment(tmp_path, seeds=[0])
    ident = {"sdmcl_version": "0.1.0", "git_commit": "a" * 40, "git_dirty": False, "source_diff_sha256": None}
    monkeypatch.setattr(provenance, "code_identity", lambda: dict(ident))
    assert main(["run", str(exp), "--no-progress", "--only", "relu"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    capsys.readouterr()

    assert main(["run", str(exp), "--no-progress", "--only", "relu"]) == 0  # same code: plain reuse
    out = capsys.readouterr().out
    assert "already finished; its summary is reused (add --rerun to train it again)" in out

    ident["git_commit"] = "b" * 40  # a new commit
    assert main(["run", str(exp), "--no-progress", "--only", "relu"]) == 0
    out = capsys.readouterr().out
    assert (f"{run_dir}: already finished; its summary is reused, but it was made by sdmcl 0.1.0 at commit aaaaaaaaaa; "
            "this is sdmcl 0.1.0 at commit bbbbbbbbbb; add --rerun to train it again") in out
    assert [s["git_commit"] for s in sessions(run_dir)] == ["a" * 40]  # not trained again

    assert main(["run", str(exp), "--no-progress", "--only", "relu", "--rerun"]) == 0
    assert [s["git_commit"] for s in sessions(run_dir)] == ["b" * 40]
    assert json.loads((run_dir / "summary.json").read_text())["provenance"]["git_commit"] == "b" * 40
    assert main(["run", str(exp), "--no-progress", "--only", "relu"]) == 0
    assert "reused (add --rerun" in capsys.readouterr().out


# ---------------------------------------------------------------- launching


def test_locked_run_is_skipped_with_a_note(tmp_path, capsys):
    exp = write_experiment(tmp_path, seeds=[0])
    runs = load_experiment(exp)
    busy = RunDir(run_dir_for(runs[0][1]))
    with busy.locked():  # as if another launcher were training it
        assert main(["run", str(exp), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"{busy.path}: skipped, in use by process {os.getpid()}" in captured.out
    assert "1 run(s) skipped, in use by other processes" in captured.err
    assert not busy.is_finished() and RunDir(run_dir_for(runs[1][1])).is_finished()


def test_shards_divide_the_runs_without_overlap():
    runs = list(range(11))
    for n in (1, 2, 3, 5):
        parts = [take_shard(runs, (i, n)) for i in range(n)]
        assert sorted(sum(parts, [])) == runs
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "a/b", "2"):
        with pytest.raises(ConfigError, match="expected i/n"):
            parse_shard(bad)


def test_jobs_divide_the_cores(monkeypatch):
    monkeypatch.setattr("sdmcl.launch.available_cores", lambda: 8)
    runs = [("a", parse_config({})), ("b", parse_config({"train": {"threads": 2}}))]
    out = divide_threads(runs, 4, oversubscribe=False)
    assert [c.train.threads for _, c in out] == [2, 2] and runs[0][1].train.threads is None
    with pytest.raises(ConfigError, match="--jobs 9: this machine has 8 cores"):
        divide_threads(runs, 9, oversubscribe=False)
    with pytest.raises(ConfigError, match=r"train.threads=2 × --jobs 6 needs 12 cores"):
        divide_threads(runs, 6, oversubscribe=False)
    assert [c.train.threads for _, c in divide_threads(runs, 6, oversubscribe=True)] == [1, 2]


@pytest.mark.parametrize("shards", [True, False])
def test_two_launchers_at_once_train_every_run_exactly_once(tmp_path, shards):
    exp = write_experiment(tmp_path, seeds=[0, 1])
    args = [["run", str(exp), "--no-progress"] + (["--shard", f"{i}/2"] if shards else []) for i in range(2)]
    procs = [sdmcl_process(a) for a in args]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    trained = [re.findall(r"\] (\S+) \(seed (\d)\): finished", out) for out, _ in outs]
    assert sorted(trained[0] + trained[1]) == [("relu", "0"), ("relu", "1"), ("sdm", "0"), ("sdm", "1")]
    if shards:
        assert "shard 0/2: 2 of 4 runs" in outs[0][0] and len(trained[0]) == len(trained[1]) == 2
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 4
    for d in run_dirs:
        assert [s["status"] for s in sessions(d)] == ["finished"], d  # one training session each


def test_jobs_stop_forwarding_and_resume_match_sequential(tmp_path):
    exp = write_experiment(tmp_path, epochs=100, seeds=[0], name="par")  # long enough to be mid-run at the signal
    seq_dir = tmp_path / "seq"
    assert main(["run", str(exp), "--no-progress", f"output.dir={seq_dir}"]) == 0
    # --jobs 2, stopped by SIGTERM to the launcher once both runs are training
    proc = sdmcl_process(["run", str(exp), "--no-progress", "--jobs", "2"])
    out_dir = tmp_path / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out_dir.glob("*/metrics.jsonl"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    dirs = sorted(out_dir.iterdir())
    for d in dirs:
        assert f"--resume {d}" in err
        assert (d / "checkpoints" / "last.pt").is_file() and not (d / "summary.json").exists()
        assert sessions(d)[-1]["status"] == "stopped"
    assert sessions(dirs[0])[-1]["command"].endswith(f"run {exp} --no-progress --jobs 2")  # the launcher's, not the worker's
    assert main(["run", str(exp), "--no-progress"]) == 0  # resumes both (here, one after the other)
    assert results(out_dir) == results(seq_dir)  # same directories, bit-identical numbers
    assert [s["status"] for s in sessions(dirs[0])] == ["stopped", "finished"]


def test_ray_backend_gives_the_same_numbers(tmp_path, capsys):
    pytest.importorskip("ray")
    exp = write_experiment(tmp_path, seeds=[0])
    seq_dir = tmp_path / "seq"
    assert main(["run", str(exp), "--no-progress", f"output.dir={seq_dir}"]) == 0
    assert main(["run", str(exp), "--no-progress", "--backend", "ray"]) == 0
    assert results(tmp_path / "runs") == results(seq_dir)
    (d, _) = sorted((tmp_path / "runs").iterdir())
    assert sessions(d)[0]["command"] == shlex.join(sys.argv)
    capsys.readouterr()
    # a request no node can meet is an error, not a wait forever
    assert main(["run", str(exp), "train.device=cuda", "--no-progress", "--backend", "ray", "--only", "relu"]) == 2
    assert "asks for 1 GPU(s) (train.device cuda" in capsys.readouterr().err


def test_ray_missing_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    exp = write_experiment(tmp_path, seeds=[0])
    assert main(["run", str(exp), "--no-progress", "--backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--backend ray needs Ray: pip install 'sdmcl[ray]'" in err


def test_progress_bars_are_off_when_stderr_is_not_a_terminal(tmp_path, capsys):
    exp = write_experiment(tmp_path, seeds=[0])
    assert main(["run", str(exp)]) == 0  # progress on, but stderr is captured (no terminal)
    err = capsys.readouterr().err
    assert "task 1/3" not in err and "runs:" not in err and "it/s" not in err

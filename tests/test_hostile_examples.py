"""Each hostile input found by hand ends cleanly: one line naming the key or file and exit 2,
or (for inputs that are fine) a finished run. Nothing half-written, no earlier result changed."""

import json
import shutil

import pytest
import torch

from hostile_common import assert_clean_outcome, cli, lock_held_elsewhere, snapshot, summaries, tiny, write_config


def refused(tmp_path, text_or_cfg, *extra, expect):
    """Run a config (YAML text or dict); it must be refused with `expect` in the one line."""
    path = tmp_path / "cfg.yaml"
    if isinstance(text_or_cfg, str):
        path.write_text(text_or_cfg)
    else:
        write_config(path, text_or_cfg)
    before = summaries(tmp_path)
    code, out, err = cli("run", path, *extra)
    assert_clean_outcome(code, out, err, before, summaries(tmp_path))
    assert code == 2, err
    for part in [expect] if isinstance(expect, str) else expect:
        assert part in err, err
    return err


# ---------------------------------------------------------------- YAML


def test_empty_yaml_file_is_refused_not_trained_with_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(tmp_path, "", expect="cfg.yaml: the file is empty")
    refused(tmp_path, "# only a comment\n", expect="the file is empty")
    assert not (tmp_path / "runs").exists()


def test_duplicate_key_is_refused_with_file_and_line(tmp_path):
    text = f"name: a\noutput: {{dir: {tmp_path}/runs}}\nmodel:\n  name: sdmlp\n  k: 4\n  k: 5\n"
    refused(tmp_path, text, expect="cfg.yaml:6: model.k: duplicate key (first given on line 5)")


def test_date_name_is_refused_with_a_quoting_hint(tmp_path):
    refused(tmp_path, "name: 2024-01-01\n", expect=["cfg.yaml:1: name: 2024-01-01 is read by YAML as a date", "quote it"])


def test_recursive_alias_is_refused(tmp_path):
    refused(tmp_path, "a: &x [*x]\n", expect="cfg.yaml:1: anchor &x refused")
    refused(tmp_path, "model: {name: sdmlp}\noptim: *m\n", expect="cfg.yaml:2: alias *m refused")


def test_exponent_learning_rate_reads_as_a_float_and_trains(tmp_path):
    text = (f"name: exp\noptim: {{lr: 1e-3}}\ndata: {{source: digits}}\nbenchmark: {{num_tasks: 1}}\n"
            f"model: {{name: sdmlp, neurons: 16, k: 2}}\ntrain: {{epochs_per_task: 1, threads: 1}}\n"
            f"output: {{dir: {tmp_path}/runs, plots: false, progress: false}}\n")
    (tmp_path / "cfg.yaml").write_text(text)
    code, out, err = cli("run", tmp_path / "cfg.yaml")
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "lr: 0.001" in (run_dir / "config.yaml").read_text()
    code, out, err = cli("run", tmp_path / "cfg.yaml", "optim.lr=2E-3")  # an override: the same reader
    assert code == 0 and len(list((tmp_path / "runs").iterdir())) == 2, err


# ---------------------------------------------------------------- non-finite numbers


@pytest.mark.parametrize("section, key, value", [("regularizer", "lam", ".nan"), ("optim", "weight_decay", ".nan"),
                                                 ("optim", "lr", ".inf"), ("optim", "grad_clip", "-.inf")])
def test_non_finite_numbers_are_refused_by_name(tmp_path, section, key, value):
    name = "name: ewc, " if section == "regularizer" else ""
    refused(tmp_path, f"name: x\n{section}: {{{name}{key}: {value}}}\n", expect=f"{section}.{key}: must be a finite number")
    refused(tmp_path, tiny(tmp_path / "runs", regularizer={"name": "ewc"}), f"{section}.{key}={value}",
            expect=f"{section}.{key}: must be a finite number")


# ---------------------------------------------------------------- the machine


@pytest.mark.parametrize("device", ["gpu", "cuda:abc", "CUDA", "cpu:0"])
def test_malformed_device_is_refused(tmp_path, device):
    refused(tmp_path, tiny(tmp_path / "runs"), f"train.device={device}", expect=f"train.device: {device!r} is not a device")


def test_missing_cuda_device_is_refused(tmp_path):
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    refused(tmp_path, tiny(tmp_path / "runs"), "train.device=cuda:7", expect="train.device: 'cuda:7' requested but")


def test_absurd_model_is_refused_with_the_memory_estimate(tmp_path, monkeypatch):
    from sdmcl import preflight

    monkeypatch.setattr(preflight, "available_memory", lambda device: (2**30, "available (test cap)"))
    err = refused(tmp_path, tiny(tmp_path / "runs"), "model.neurons=10000000000",
                  expect=["model: the run needs about", "GiB of memory", "model.neurons = 10000000000"])
    assert not list((tmp_path / "runs").glob("*/checkpoints/*"))
    # the estimate: 10^10 neurons × (64 + 10) float32 weights = 2,756.7 GiB (+ the counters of
    # each neuron), and as much again for their gradients
    assert "gradients 2756.7 GiB" in err and "but 1.0 GiB is available (test cap)" in err


def test_threads_above_the_cores_are_refused_unless_forced(tmp_path):
    from sdmcl.preflight import usable_cores

    cores = usable_cores()
    refused(tmp_path, tiny(tmp_path / "runs"), f"train.threads={cores + 1}",
            expect=f"train.threads: {cores + 1} is more than the {cores} CPU core")
    refused(tmp_path, tiny(tmp_path / "runs"), "train.threads=100000", "train.oversubscribe=true",
            expect="train.threads: 100000 is far above")
    code, out, err = cli("run", write_config(tmp_path / "ok.yaml", tiny(tmp_path / "runs")), f"train.threads={cores + 1}",
                         "train.oversubscribe=true")
    assert code == 0, err


def test_long_run_name_is_refused_before_training(tmp_path):
    refused(tmp_path, tiny(tmp_path / "runs", name="n" * 300), expect="name: the run directory name")
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs").mkdir()  # where the name is looked up, not only created
    refused(tmp_path, tiny(tmp_path / "runs", name="n" * 300), expect="name: the run directory name")
    refused(tmp_path, tiny(tmp_path / "runs", init_from=str(tmp_path / ("m" * 300))), expect="cannot be read (File name too long)")
    assert list((tmp_path / "runs").iterdir()) == []


def test_compare_out_into_a_missing_directory_is_refused_before_training(tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny(tmp_path / "runs"))
    code, out, err = cli("compare", path, "--out", tmp_path / "missing_dir" / "t.txt")
    assert code == 2 and "--out" in err and "missing_dir does not exist" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # nothing was trained
    code, out, err = cli("compare", path, "--out", tmp_path / "t.txt")
    assert code == 0 and "final avg acc" in (tmp_path / "t.txt").read_text(), err


# ---------------------------------------------------------------- resume from the run directory


@pytest.fixture()
def stopped_run(tmp_path, monkeypatch):
    """A run stopped by SIGINT after its first task (a checkpoint, no summary)."""
    cfg = tiny(tmp_path / "runs", train={"epochs_per_task": 2}, output={"checkpoint_every": 1})
    path = write_config(tmp_path / "stop.yaml", cfg)
    monkeypatch.setenv("SDMCL_FAULT", "step:8:SIGINT")
    code, out, err = cli("run", path)
    monkeypatch.delenv("SDMCL_FAULT")
    assert code == 130, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "summary.json").exists()
    return path, run_dir


def test_resume_with_a_result_changing_override_is_refused(stopped_run):
    path, run_dir = stopped_run
    before = snapshot(run_dir)
    code, out, err = cli("run", "--resume", run_dir, "optim.lr=0.2")
    assert code == 2 and err.count("\n") == 1, err
    assert "optim.lr (0.05 in the run, 0.2 given)" in err and f"sdmcl run {run_dir}/config.yaml optim.lr=0.2" in err
    assert snapshot(run_dir) == before
    # keys that do not change results may be given
    code, out, err = cli("run", "--resume", run_dir, "train.threads=1", "output.progress=false")
    assert code == 0 and (run_dir / "summary.json").is_file(), err


def test_resume_after_editing_config_yaml_names_the_changed_key(stopped_run):
    path, run_dir = stopped_run
    cfg_file = run_dir / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("\n  k: 2\n", "\n  k: 3\n"))
    before = snapshot(run_dir)
    code, out, err = cli("run", "--resume", run_dir)
    assert code == 2 and err.count("\n") == 1, err
    assert "config.yaml: differs from the config the run started with (recorded in last.pt): model.k (2 when the run started, 3 now)" in err
    assert f"sdmcl run {cfg_file}" in err
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("where", ["renamed", "moved"])
def test_renamed_or_moved_run_directory_resumes(stopped_run, tmp_path, where):
    path, run_dir = stopped_run
    target = run_dir.with_name("my-run") if where == "renamed" else tmp_path / "elsewhere" / "deep" / run_dir.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(run_dir, target)
    code, out, err = cli("run", "--resume", target)
    assert code == 0, err
    assert "resuming" in out and (target / "summary.json").is_file()
    assert not run_dir.exists()  # nothing recreated at the old place
    assert f"dir: {target.parent}" in (target / "config.yaml").read_text()
    # the same run uninterrupted gives the same numbers
    code, out, err = cli("run", path, f"output.dir={tmp_path / 'fresh'}")
    fresh = json.loads(next((tmp_path / "fresh").glob("*/summary.json")).read_text())
    resumed = json.loads((target / "summary.json").read_text())
    assert resumed["final_task_accuracy"] == fresh["final_task_accuracy"]


def test_resume_of_a_locked_run_names_the_holder(stopped_run):
    from sdmcl.train.rundir import RunDir

    path, run_dir = stopped_run
    with lock_held_elsewhere(RunDir(run_dir)) as pid:
        code, out, err = cli("run", "--resume", run_dir)
        assert code == 2 and f"in use by process {pid}" in err and err.count("\n") == 1, err
        # the same config run again is left to the process that holds it (several launchers may share runs)
        code, out, err = cli("run", path)
        assert code == 0 and "skipped, in use by other processes" in err and "Traceback" not in err, err


def test_resume_of_a_run_without_checkpoint_names_the_directory(tmp_path):
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    write_config(run_dir / "config.yaml", tiny(tmp_path / "runs"))
    code, out, err = cli("run", "--resume", run_dir)
    assert code == 2 and f"{run_dir}: no checkpoint to resume from" in err, err


# ---------------------------------------------------------------- artefacts read back


@pytest.fixture()
def finished_run(tmp_path):
    path = write_config(tmp_path / "done.yaml", tiny(tmp_path / "runs"))
    code, out, err = cli("run", path)
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    return path, run_dir


@pytest.mark.parametrize("damage", ["truncated", "empty", "nan", "not-an-object"])
def test_report_skips_a_damaged_summary_and_says_so(finished_run, tmp_path, damage):
    path, run_dir = finished_run
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    s = run_dir / "summary.json"
    text = s.read_text()
    s.write_text({"truncated": text[: len(text) // 2], "empty": "", "nan": json.dumps({**json.loads(text), "forgetting": float("nan")}),
                  "not-an-object": "[1, 2]"}[damage])
    code, out, err = cli("report", run_dir, other)
    assert code == 0 and "tiny" in out and "Traceback" not in err, err
    assert f"{run_dir}: corrupt: summary.json: " in out and "the file is damaged" in out  # listed under the table
    code, out, err = cli("report", run_dir)
    assert code == 2 and f"{run_dir}: corrupt: summary.json: " in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("sdmcl: error: no finished run among")


def test_run_of_a_config_whose_finished_run_has_a_damaged_summary(finished_run):
    path, run_dir = finished_run
    s = run_dir / "summary.json"
    s.write_text(s.read_text()[:40])
    before = snapshot(run_dir)
    code, out, err = cli("run", path)
    assert code == 2 and f"{s}: not valid JSON" in err and err.count("\n") == 1, err
    assert f"sdmcl run --resume {run_dir}" in err
    assert snapshot(run_dir) == before
    # the fix the message gives works: the summary is written again from the last checkpoint
    s.unlink()
    code, out, err = cli("run", "--resume", run_dir)
    assert code == 0 and json.loads(s.read_text())["name"] == "tiny", err


def test_flipped_byte_in_checkpoint_weights_is_detected(finished_run, tmp_path):
    import zipfile

    path, run_dir = finished_run
    model_pt = run_dir / "model.pt"
    raw = bytearray(model_pt.read_bytes())
    with zipfile.ZipFile(model_pt) as z:
        info = max(z.infolist(), key=lambda i: i.file_size if "/data/" in i.filename else 0)
    offset = info.header_offset + 30 + int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little") \
        + int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    raw[offset + 5] ^= 0x01  # one bit of one weight: torch.load alone accepts this silently
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(raw))
    cfg = tiny(tmp_path / "runs2", init_from=str(bad))
    refused(tmp_path, cfg, expect=[f"{bad}: unreadable checkpoint", "fails its CRC check"])


# ---------------------------------------------------------------- the pieces behind them


def test_every_model_builds_on_the_meta_device_with_its_real_size():
    """The memory estimate builds models on the meta device; each registered model must
    build there, with exactly the parameters and buffers of a real build."""
    from sdmcl.config import parse_config
    from sdmcl.preflight import _bytes, meta_model
    from sdmcl.registry import MODELS, load_all
    from sdmcl.train.engine import build_model

    load_all()
    needs = {"nispa": {"train": {"validation_fraction": 0.1}}}  # NISPA ends its phases on validation accuracy
    for name in MODELS:
        cfg = parse_config({"model": {"name": name}, **needs.get(name, {})})
        meta = meta_model(cfg, 64, 10, (1, 8, 8))  # digits: 8×8 images, 64 inputs
        assert meta is not None, name
        real = build_model(cfg, 64, 10, (1, 8, 8))
        assert _bytes(meta.parameters()) == _bytes(real.parameters()), name
        assert _bytes(meta.buffers()) == _bytes(real.buffers()), name


def test_memory_estimate_by_hand():
    """SDMLP 1000 neurons, 64 inputs, 10 classes: 74,000 float32 weights = 296,000 bytes;
    SGD with momentum keeps one copy, per-task EWC two per task (5 tasks)."""
    from sdmcl.config import parse_config
    from sdmcl.preflight import estimate_memory

    cfg = parse_config({"model": {"name": "sdmlp", "neurons": 1000, "k": 10}, "optim": {"name": "sgdm"},
                        "regularizer": {"name": "ewc"}, "train": {"batch_size": 128, "eval_batch_size": 512}})
    parts = estimate_memory(cfg, 64, 10, largest_train=290, test_total=360, num_tasks=5)
    P = 1000 * 74 * 4
    assert parts["gradients"] == P and parts["optimizer state"] == P and parts["regularizer state"] == 10 * P
    from sdmcl.train.engine import build_model

    buffers = sum(b.numel() * b.element_size() for b in build_model(cfg, 64, 10).buffers())
    assert buffers >= 1000 * 8 * 2  # at least the int64 GABA counters and the activity window
    assert parts["model"] == P + buffers
    assert parts["data copies"] == (290 + 360) * 64 * 4  # the inputs prepared once (relu, L2 norm)
    assert parts["activations"] == 4 * 1010 * (4 * 128 + 3 * 360)


def test_written_config_reads_back_identically(tmp_path):
    """config.yaml is written so the strict reader reads back the same values (text that
    looks like a number, a date or base 60 is quoted)."""
    from sdmcl.strict_yaml import dump_yaml, loads_yaml

    data = {"name": "1e-3", "a": "2024-01-01", "b": "1:30", "c": "010", "d": "yes", "e": 1e-5, "f": [1, 2], "g": None,
            "h": "x" * 5, "i": "é", "j": 2**62}
    shared = [1, 2]
    data["k"], data["l"] = shared, shared  # a shared value is written twice, not as an alias
    assert loads_yaml(dump_yaml(data)) == data


@pytest.mark.parametrize("kind", ["host", "gpu"])
def test_running_out_of_memory_mid_run_is_one_line(monkeypatch, capsys, kind):
    """Memory beyond the pre-run estimate (fragmentation, other processes) ends in one line
    saying what ran out and what to change, exit 2, not in a traceback."""
    import torch

    from sdmcl import cli

    def handler(args):
        raise MemoryError() if kind == "host" else torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    import argparse

    real_parse = argparse.ArgumentParser.parse_known_args

    def parse(self, *a, **k):
        ns, extra = real_parse(self, *a, **k)
        ns.func = handler
        return ns, extra

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse)
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"out of {'host' if kind == 'host' else 'GPU'} memory while running" in err


@pytest.mark.parametrize("model", [{"name": "convmixer", "hdim": 8, "depth": 1, "patch_size": 4},
                                   {"name": "convsdm", "hdim": 8, "depth": 1, "patch_size": 4, "neurons": 16, "k": 2}])
def test_image_models_train_with_a_closed_form_penalty(tmp_path, model):
    """Found by the long hypothesis profile: a plain-SGD image model with EWC crashed when the
    engine switched row-sparse updates on a model that has none (ConvMixer) or passed the
    all-rows flag its head needs (ConvSDM). Both train, and the penalty takes effect."""
    cfg = tiny(tmp_path / "runs", regularizer={"name": "ewc", "lam": 10.0})
    cfg["model"] = model
    code, out, err = cli("run", write_config(tmp_path / "c.yaml", cfg))
    assert code == 0, err
    assert "Traceback" not in err
    (summary,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/summary.json")]
    assert summary["regularizer"] == "ewc" and len(summary["final_task_accuracy"]) == 2


def test_init_from_a_missing_file_names_the_setting(tmp_path):
    refused(tmp_path, tiny(tmp_path / "runs", init_from="_"), expect="init_from _: checkpoint file not found")


def test_a_line_break_in_a_name_keeps_the_error_on_one_line(tmp_path):
    """Found by the long hypothesis profile: a variant label holding a line break split the
    error message over two lines; it is shown escaped."""
    cfg = tiny(tmp_path / "runs", variants={"a\nb": None})
    err = refused(tmp_path, cfg, expect="variants.a\\nb: expected a mapping")
    assert err.count("\n") == 1


@pytest.mark.parametrize("optim, expect", [
    ({"name": "sgd", "lr": 0.05, "weight_decay": 255}, "optim.weight_decay: lr × weight_decay = 12.75 ≥ 2"),
    ({"name": "sgdm", "lr": 0.1, "momentum": 0.5, "weight_decay": 30}, "optim.weight_decay: lr × weight_decay = 3 ≥ 3"),
    ({"name": "adamw", "lr": 1.0, "weight_decay": 2}, "use weight_decay < 2"),
    ({"name": "adam", "lr": 0.001, "weight_decay": 3.402823466385289e38}, "optim.weight_decay: 3.402823466385289e+38 is beyond float32"),
])
def test_weight_decay_that_alone_diverges_is_refused(tmp_path, optim, expect):
    """Found by the long hypothesis profile: a finite but absurd weight decay trained and then
    'diverged' blaming the learning rate (or overflowed inside torch). SGD multiplies a weight
    by (1 − lr·wd) per step: |1 − lr·wd| ≥ 1 from lr·wd = 2 on; heavy-ball momentum μ moves
    the bound to 2(1 + μ) (here 2 × 1.5 = 3)."""
    refused(tmp_path, tiny(tmp_path / "runs", optim=optim), expect=expect)


def test_divergence_hint_names_the_weight_decay(tmp_path):
    """Adam's coupled decay has no such bound; when a run diverges the hint names every knob set."""
    from sdmcl.config import parse_config

    parse_config(tiny(tmp_path / "runs", optim={"name": "adam", "lr": 0.001, "weight_decay": 1000.0}))  # allowed
    cfg = tiny(tmp_path / "runs", optim={"name": "sgd", "lr": 1.0e30, "weight_decay": 1.0e-31, "grad_clip": None},
               model={"name": "relu_mlp", "neurons": 8})
    cfg["model"] = {"name": "relu_mlp", "neurons": 8}
    code, out, err = cli("run", write_config(tmp_path / "c.yaml", cfg))
    assert code == 3 and err.count("\n") == 1 and err.startswith("sdmcl: error: ")
    assert "a smaller optim.lr (now 1e+30), a smaller optim.weight_decay (now 1e-31) or enable optim.grad_clip" in err


def test_a_huge_penalty_strength_diverges_by_name(tmp_path):
    """Found by the long hypothesis profile: L2 with lam 1e300 overflowed inside torch (the
    closed-form penalty's scalar factor); now the penalty is inf and the run stops as diverged."""
    cfg = tiny(tmp_path / "runs", regularizer={"name": "l2", "lam": 1e300})
    cfg["model"] = {"name": "relu_mlp", "neurons": 8}
    code, out, err = cli("run", write_config(tmp_path / "c.yaml", cfg))
    assert code == 3 and err.count("\n") == 1 and err.startswith("sdmcl: error: ") and "training diverged" in err, err

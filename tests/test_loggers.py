"""Loggers (output.loggers): what TensorBoard's and W&B's own readers find in a run's files."""

import json
import struct

import pytest

from sdmcl.cli import main
from sdmcl.config import parse_config
from sdmcl.errors import ConfigError
from sdmcl.train.engine import run


def tiny(tmp_path, loggers, **output):
    return parse_config({
        "name": "logged", "data": {"source": "digits"},
        "model": {"name": "sdmlp", "neurons": 40, "k": 3, "gaba_switch_activations": 300},
        "optim": {"lr": 0.2}, "benchmark": {"num_tasks": 3},
        "train": {"epochs_per_task": 2, "batch_size": 64, "eval_every": 1, "threads": 1},
        "output": {"dir": str(tmp_path / "runs"), "progress": False, "plots": False, "loggers": loggers, **output},
    })


def metrics_of(rd) -> list[dict]:
    return [json.loads(line) for line in (rd.path / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_hold_the_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rd, summary = run(tiny(tmp_path, ["tensorboard"]), log=lambda s: None)
    ea = EventAccumulator(str(rd.path / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    history = metrics_of(rd)
    seen = ea.Scalars("accuracy/seen_average")
    assert [e.step for e in seen] == [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in seen] == pytest.approx([h["seen_average_accuracy"] for h in history], abs=1e-6)
    task1 = ea.Scalars("accuracy/task_1")
    assert [e.value for e in task1] == pytest.approx([h["task_accuracy"][0] for h in history], abs=1e-6)
    assert [e.step for e in ea.Scalars("accuracy/task_3")] == [5, 6]  # a task appears once it is trained
    assert [e.value for e in ea.Scalars("train/loss")] == pytest.approx([h["train_loss"] for h in history], rel=1e-6)
    assert "neurons/gaba_switched" in ea.Tags()["scalars"]
    images = ea.Images("accuracy_matrix")  # one per task end
    assert [i.step for i in images] == [2, 4, 6] and images[0].encoded_image_string[:4] == b"\x89PNG"
    final = ea.Scalars("final/final_average_accuracy")
    assert final[0].value == pytest.approx(summary["final_average_accuracy"], abs=1e-6)
    assert ea.Scalars("final/forgetting")[0].value == pytest.approx(summary["forgetting"], abs=1e-6)
    # the hparams session: the resolved config with the final metrics
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = ea.PluginTagToContent("hparams")
    start = next(plugin_data_pb2.HParamsPluginData.FromString(v).session_start_info for v in content.values()
                 if plugin_data_pb2.HParamsPluginData.FromString(v).HasField("session_start_info"))
    assert start.hparams["model.k"].number_value == 3 and start.hparams["optim.name"].string_value == "sgd"


def wandb_records(path):
    """The records of a .wandb file (W&B's append-only log: a 7-byte header, then LevelDB-style
    chunks in 32 KiB blocks), decoded with W&B's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL, or LAST of a FIRST/MIDDLE.../LAST sequence
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_run_holds_the_metrics(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rd, summary = run(tiny(tmp_path, ["wandb"], wandb_project="sdmcl-test"), log=lambda s: None)
    wandb.teardown()  # as at process exit: W&B's service finishes writing the run's file
    (log,) = (rd.path / "wandb").glob("offline-run-*/run-*.wandb")
    rows, final, run_info = {}, {}, None
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            item = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            rows[item["_step"]] = item
        elif kind == "summary":
            final.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in record.summary.update})
        elif kind == "run":
            run_info = record.run
    history = metrics_of(rd)
    assert sorted(rows) == [h["epoch"] for h in history]
    for h in history:
        assert rows[h["epoch"]]["accuracy/seen_average"] == pytest.approx(h["seen_average_accuracy"])
        assert rows[h["epoch"]]["accuracy/task_1"] == pytest.approx(h["task_accuracy"][0])
    # the accuracy matrix image of each task end, stored beside the log
    assert [s for s in sorted(rows) if rows[s].get("accuracy_matrix/_type") == "image-file"] == [2, 4, 6]
    assert (log.parent / "files" / rows[6]["accuracy_matrix/path"]).read_bytes()[:4] == b"\x89PNG"
    assert final["final/final_average_accuracy"] == pytest.approx(summary["final_average_accuracy"])
    assert run_info.project == "sdmcl-test" and run_info.display_name == rd.path.name and run_info.run_group == "logged"
    config = {u.key: json.loads(u.value_json) for u in run_info.config.update}
    assert config["model"]["k"] == 3 and config["seed"] == 0


def test_unknown_or_uninstalled_logger_is_a_config_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="output.loggers: unknown logger 'tensorbord' \\(did you mean 'tensorboard'\\?\\)"):
        tiny(tmp_path, ["tensorbord"])
    with pytest.raises(ConfigError, match="listed twice"):
        tiny(tmp_path, ["tensorboard", "tensorboard"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"'wandb' needs the wandb package, which is not installed; pip install 'sdmcl\[wandb\]'"):
        tiny(tmp_path, ["wandb"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {source: digits}\noutput: {loggers: [wandb]}\n")
    assert main(["run", str(cfg), f"output.dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sdmcl[wandb]" in err and not (tmp_path / "runs").exists()


def test_wandb_without_login_stops_with_a_hint(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from sdmcl.train import loggers

    def refuse(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(loggers.LoggerError, match="W&B did not start .*WANDB_MODE=offline"):
        run(tiny(tmp_path, ["wandb"]), log=lambda s: None)

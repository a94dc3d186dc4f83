"""ConvMixer and ConvSDM: shapes, the reference's sizes, one training step, the engine end to
end on images, the saved model's `embed`, a pretrained start, LR schedules, mixed precision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sdmcl.config import OptimConfig, parse_config
from sdmcl.errors import ConfigError
from sdmcl.models.convmixer import ConvMixer, ConvMixerConfig
from sdmcl.models.convsdm import ConvSDM, ConvSDMConfig
from sdmcl.registry import build_model
from sdmcl.train.optim import LRSchedule, build_schedule


def test_convmixer_reference_sizes_and_shapes():
    cfg = ConvMixerConfig()
    assert (cfg.hdim, cfg.depth, cfg.patch_size, cfg.kernel_size) == (256, 8, 2, 5)
    model = build_model(cfg, 3072, 10, (3, 32, 32))
    # patch conv 3·256·2·2+256, BN 512; per block: depthwise 256·25+256, BN 512, pointwise 256²+256,
    # BN 512; head 256·10+10
    per_block = (256 * 25 + 256) + 512 + (256 * 256 + 256) + 512
    expected = (3 * 256 * 4 + 256) + 512 + 8 * per_block + (256 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected == 594186
    model.eval()
    x = torch.rand(3, 3, 32, 32)
    assert model(x).shape == (3, 10)
    assert torch.equal(model(x.reshape(3, -1)), model(x))  # flattened rows are reshaped
    emb = model.embed(x)
    assert emb.shape == (3, 256)
    assert torch.allclose(model.head(emb), model(x))


def test_convmixer_normalises_inside_the_model():
    cfg = ConvMixerConfig(hdim=4, depth=1, input_mean=[0.5], input_std=[0.25])
    model = ConvMixer(cfg, (1, 4, 4), 2).eval()
    plain = ConvMixer(ConvMixerConfig(hdim=4, depth=1), (1, 4, 4), 2).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    x = torch.rand(2, 1, 4, 4)
    assert torch.allclose(model(x), plain((x - 0.5) / 0.25), atol=1e-6)


def test_convsdm_defaults_shapes_and_constraints():
    cfg = ConvSDMConfig()
    assert (cfg.depth, cfg.hdim, cfg.positive_weights, cfg.l2_norm, cfg.bias, cfg.gaba_switch_activations) == (2, 256, False, True, False, 500_000)
    model = build_model(ConvSDMConfig(hdim=16, neurons=40, k=3), 784, 10, (1, 28, 28))
    x = torch.rand(5, 784)
    assert model(x).shape == (5, 10) and model.embed(x).shape == (5, 16)
    logits, hidden = model.forward_with_hidden(x)
    assert logits.shape == (5, 10) and hidden.shape == (5, 40)
    norms = model.head.addresses.weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones(40), atol=1e-5)
    # positive weights clamp the head only, unless constrain_trunk (the reference) is on
    signed = ConvSDM(ConvSDMConfig(hdim=8, neurons=20, k=2, positive_weights=True), (1, 8, 8), 3)
    assert (signed.head.values.weight >= 0).all() and (signed.trunk.patches.weight < 0).any()
    clamped = ConvSDM(ConvSDMConfig(hdim=8, neurons=20, k=2, positive_weights=True, constrain_trunk=True), (1, 8, 8), 3)
    assert all((p >= 0).all() for p in clamped.trunk.parameters())
    relu = build_model(ConvSDMConfig(hdim=8, neurons=20, head="relu"), 64, 3, (1, 8, 8))
    assert relu(torch.rand(2, 64)).shape == (2, 3) and relu.head.fc1.bias is not None


def test_convsdm_one_training_step():
    torch.manual_seed(0)
    model = ConvSDM(ConvSDMConfig(hdim=8, neurons=30, k=3, gaba_switch_activations=1000), (1, 8, 8), 4)
    model.train()
    x, y = torch.rand(16, 64), torch.randint(0, 4, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    # gradients reach the trunk through the SDMLP head's fused backward
    assert model.trunk.patches.weight.grad.abs().sum() > 0 and model.head.addresses.weight.grad.abs().sum() > 0
    opt.step()
    model.apply_constraints()
    after = model.state_dict()
    assert not torch.equal(before["trunk.patches.weight"], after["trunk.patches.weight"])
    assert not torch.equal(before["head.values.weight"], after["head.values.weight"])
    # GABA counters: early on every neuron with a positive input is active, each counts its samples
    counts = after["head.topk.gaba_counters"]
    assert int(counts.sum()) > 0 and int(counts.max()) <= 16
    assert torch.allclose(model.head.addresses.weight.norm(dim=1), torch.ones(30), atol=1e-5)
    assert "trunk.blocks.0.norm1.running_mean" in after  # BatchNorm statistics are model state


def test_image_model_on_non_image_data_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"convmixer takes images \(channels, height, width\).*\(256,\)"):
        build_model(ConvMixerConfig(), 256, 10, (256,))
    with pytest.raises(ConfigError, match="patch_size: 4 is larger than the 2x2 images"):
        build_model(ConvMixerConfig(patch_size=4), 4, 2, (1, 2, 2))
    with pytest.raises(ConfigError, match="input_mean: 3 values for images with 1 channel"):
        build_model(ConvMixerConfig(input_mean=[0.5] * 3, input_std=[0.2] * 3), 64, 2, (1, 8, 8))


def image_cfg(tmp_path, model: dict, **sections):
    raw = {
        "name": "img",
        "data": {"source": "digits"},
        "model": model,
        "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.005},
        "train": {"epochs_per_task": 2, "batch_size": 128, "threads": 1},
        "output": {"dir": str(tmp_path / "runs"), "progress": False, "plots": False},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return parse_config(raw)


def test_engine_trains_convmixer_and_model_pt_rebuilds_for_embed(tmp_path):
    from sdmcl.train.checkpoint import load_checkpoint, load_model
    from sdmcl.train.engine import prepare, run

    cfg = image_cfg(tmp_path, {"name": "convmixer", "hdim": 16, "depth": 1},
                    benchmark={"joint": True}, optim={"schedule": "onecycle"},
                    augment={"enabled": True, "randaugment_ops": 1, "randaugment_magnitude": 5},
                    train={"epochs_per_task": 3, "batch_size": 64})
    rd, summary = run(cfg, log=lambda s: None)
    assert summary["final_average_accuracy"] > 0.5  # 10 digits, 3 epochs: well above chance (0.1)
    ckpt = load_checkpoint(rd.model_path)
    assert ckpt["input_shape"] == [1, 8, 8]
    model = load_model(rd.path)  # the run directory's model.pt, rebuilt from its config
    assert not model.training
    x = prepare(cfg).tasks[0].test_x[:7]
    emb = model.embed(x)
    assert emb.shape == (7, 16)
    with torch.no_grad():
        pred = model.head(emb).argmax(1)
    assert torch.equal(pred, model(x).argmax(1))


def test_convsdm_pretrained_start_keeps_trunk_and_counters(tmp_path):
    from sdmcl.train.checkpoint import load_checkpoint
    from sdmcl.train.engine import run

    model = {"name": "convsdm", "hdim": 8, "neurons": 40, "k": 4, "gaba_switch_activations": 500}
    pre_dir, _ = run(image_cfg(tmp_path, model, benchmark={"joint": True}), log=lambda s: None)
    pre = load_checkpoint(pre_dir.model_path)["model"]
    cfg = image_cfg(tmp_path, model, benchmark={"num_tasks": 1}, train={"epochs_per_task": 1})
    cfg.init_from = str(pre_dir.path)
    from sdmcl.train.engine import Engine, prepare
    from sdmcl.train.rundir import RunDir

    engine = Engine(prepare(cfg), RunDir(tmp_path / "unused"), progress=False, log=lambda s: None)
    state = engine.model.state_dict()
    assert torch.equal(state["trunk.patches.weight"], pre["trunk.patches.weight"])
    assert torch.equal(state["head.topk.gaba_counters"], pre["head.topk.gaba_counters"])
    assert int(state["head.topk.gaba_counters"].sum()) > 0


def test_lr_schedules_by_hand():
    one = LRSchedule(OptimConfig(lr=0.01, schedule="onecycle"), epochs_per_task=10, num_tasks=2)
    # span 20 epochs: 0 → lr at 8, → lr/20 at 16, → 0 at 20
    assert [one.factor(t) for t in (0, 4, 8, 12, 16, 20)] == pytest.approx([0, 0.5, 1, 0.525, 0.05, 0])
    assert one.position(1, 3, 0.5) == 13.5
    cos = LRSchedule(OptimConfig(lr=1.0, schedule="warmup_cosine", warmup_epochs=2), 10, 1)
    assert [cos.factor(t) for t in (1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 0.5, 0.0])
    per_task = LRSchedule(OptimConfig(lr=1.0, schedule="warmup_cosine", schedule_span="task"), 4, 3)
    assert per_task.position(2, 1, 0.25) == 1.25 and per_task.factor(2) == pytest.approx(0.5)
    warm = LRSchedule(OptimConfig(lr=0.1, warmup_epochs=4), 10, 1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    assert warm.apply(opt, 0, 1, 0.0) == pytest.approx(0.025) and opt.param_groups[0]["lr"] == pytest.approx(0.025)
    assert warm.apply(opt, 0, 7, 0.5) == pytest.approx(0.1)
    assert build_schedule(OptimConfig(), 10, 1) is None  # the default: the engine never touches the rate
    with pytest.raises(ConfigError, match="onecycle warms up"):
        parse_config({"optim": {"schedule": "onecycle", "warmup_epochs": 1}})


def test_engine_steps_the_schedule(tmp_path):
    from sdmcl.train.engine import Engine, prepare
    from sdmcl.train.rundir import RunDir

    cfg = image_cfg(tmp_path, {"name": "convmixer", "hdim": 4, "depth": 0}, benchmark={"joint": True},
                    optim={"schedule": "onecycle"}, train={"epochs_per_task": 5})
    engine = Engine(prepare(cfg), RunDir(tmp_path / "unused"), progress=False, log=lambda s: None)
    rates = []
    engine.model.register_forward_pre_hook(lambda m, a: rates.append(engine.optimizer.param_groups[0]["lr"]) if m.training else None)
    engine.train_epoch(engine.tasks[0], 1)  # epoch 2 of 5: positions 1 + s/12 for the 12 steps of 1,438 images
    steps = math.ceil(1438 / 128)
    assert rates == pytest.approx([0.01 * (1 + (s + 1) / steps) / 2 for s in range(steps)])


def test_mixed_precision_needs_cuda_and_an_image_model(tmp_path):
    from sdmcl.train.engine import run

    cfg = image_cfg(tmp_path, {"name": "convmixer", "hdim": 4, "depth": 1}, train={"precision": "fp16", "device": "cpu"})
    with pytest.raises(ConfigError, match="train.precision: 'fp16' needs a CUDA device"):
        run(cfg, log=lambda s: None)
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda(tmp_path, precision):
    from sdmcl.train.checkpoint import load_checkpoint
    from sdmcl.train.engine import run

    for model in ({"name": "convmixer", "hdim": 16, "depth": 1}, {"name": "convsdm", "hdim": 16, "neurons": 40, "k": 4}):
        cfg = image_cfg(tmp_path, model, benchmark={"joint": True}, train={"precision": precision, "device": "cuda"})
        rd, summary = run(cfg, log=lambda s: None)
        assert summary["final_average_accuracy"] > 0.3
        ckpt = load_checkpoint(rd.checkpoint_path)
        assert all(v.dtype != torch.float16 for v in ckpt["model"].values())  # weights stay fp32
        assert ("grad_scaler" in ckpt) == (precision == "fp16")
    with pytest.raises(ConfigError, match="is for the image models"):
        run(image_cfg(tmp_path, {"name": "sdmlp"}, train={"precision": precision, "device": "cuda"}), log=lambda s: None)


class Crash(Exception):
    pass


def test_convsdm_with_augmentation_and_schedule_resumes_bit_identical(tmp_path, monkeypatch):
    """A run that dies mid-epoch and is run again continues exactly: the augmentation, the
    schedule, BatchNorm statistics, AdamW state and GABA counters (CPU). (The death is a
    signal turned into an exception in this process; SIGKILL itself is tested with the
    SDMLP in test_resume.py.)"""
    import signal

    from sdmcl.train.checkpoint import load_checkpoint
    from sdmcl.train.engine import run

    def cfg_in(out: str):
        return image_cfg(tmp_path, {"name": "convsdm", "hdim": 8, "depth": 1, "neurons": 30, "k": 3, "gaba_switch_activations": 1500},
                         optim={"schedule": "warmup_cosine", "warmup_epochs": 1},
                         augment={"enabled": True, "crop_scale": 0.7, "randaugment_ops": 1, "jitter": 0.1, "erase_prob": 0.25},
                         benchmark={"num_tasks": 2}, output={"dir": str(tmp_path / out), "checkpoint_every": 1})

    ref_dir, ref = run(cfg_in("ref"), log=lambda s: None)

    def crash(signum, frame):
        raise Crash()

    old = signal.signal(signal.SIGUSR1, crash)
    try:
        monkeypatch.setenv("SDMCL_FAULT", "step:4:SIGUSR1")  # 3 steps per epoch: inside task 1's second epoch
        with pytest.raises(Crash):
            run(cfg_in("cut"), log=lambda s: None)
    finally:
        signal.signal(signal.SIGUSR1, old)
    monkeypatch.delenv("SDMCL_FAULT")
    lines = []
    cut_dir, cut = run(cfg_in("cut"), log=lines.append)
    assert any("resuming" in line for line in lines)
    a, b = load_checkpoint(ref_dir.model_path)["model"], load_checkpoint(cut_dir.model_path)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ref_dir.metrics_path.read_text() == cut_dir.metrics_path.read_text()
    assert ref["final_task_accuracy"] == cut["final_task_accuracy"]

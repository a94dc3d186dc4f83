"""Batched, seeded image augmentation: each operation against hand-computed results, seeding
(same seed → same batch; the engine's next epoch → different batch), and its config."""

from __future__ import annotations

import pytest
import torch

from sdmcl.config import AugmentConfig, parse_config
from sdmcl.data.augment import Augmenter, autocontrast, equalize, posterize, ra_magnitude, solarize
from sdmcl.errors import ConfigError


def fixed_draws(aug: Augmenter, values: list[list[float]]) -> None:
    """Make the augmenter's next random draw return `values` (one row per image)."""
    aug._rand = lambda gen, *shape, like: torch.tensor(values, dtype=torch.float32)[:, : shape[1]]


def test_flip_only_is_an_exact_mirror():
    x = torch.rand(6, 2 * 5 * 7, generator=torch.Generator().manual_seed(0))
    aug = Augmenter(AugmentConfig(enabled=True, flip=1.0, randaugment_ops=0), (2, 5, 7))
    out = aug(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    assert torch.equal(out, x.view(6, 2, 5, 7).flip(3).reshape(6, -1))


def test_random_resized_crop_samples_the_drawn_box():
    # ramp image value = x + 10·y: bilinear resampling of a linear function is exact
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    img = (xs + 10 * ys).expand(2, 1, 8, 8).clone() / 100
    aug = Augmenter(AugmentConfig(enabled=True, crop_scale=0.25, randaugment_ops=0), (1, 8, 8))
    # area fraction 0.25 → a 4×4 box; top = floor(0.5·5) = 2, left = 2; image 0 kept, image 1 flipped
    fixed_draws(aug, [[0.0, 0.5, 0.5, 0.9], [0.0, 0.5, 0.5, 0.1]])
    out = aug.crop_and_flip(img, None)
    u = torch.arange(8.0)
    # output pixel u samples the input at 2 + (u + 0.5)·4/8 − 0.5; mirrored: 5.25 − 0.5u
    x_in, y_in = 1.75 + 0.5 * u, 1.75 + 0.5 * u
    expected = (x_in[None, :] + 10 * y_in[:, None]) / 100
    assert torch.allclose(out[0, 0], expected, atol=1e-5)
    x_flip = 5.25 - 0.5 * u
    assert torch.allclose(out[1, 0], (x_flip[None, :] + 10 * y_in[:, None]) / 100, atol=1e-5)


def test_randaugment_magnitudes_follow_torchvision_bins():
    assert ra_magnitude("shear_x", 12, 32, 32) == pytest.approx(0.3 * 12 / 30)
    assert ra_magnitude("translate_x", 30, 32, 32) == pytest.approx(150 / 331 * 32)
    assert ra_magnitude("rotate", 15, 32, 32) == pytest.approx(15.0)
    assert ra_magnitude("brightness", 30, 32, 32) == pytest.approx(0.9)
    assert ra_magnitude("posterize", 12, 32, 32) == 6  # 8 − round(12 / 7.5)
    assert ra_magnitude("posterize", 8, 32, 32) == 7
    assert ra_magnitude("solarize", 6, 32, 32) == pytest.approx(0.8)


def test_translate_moves_whole_pixels_and_fills_zero():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    aug = Augmenter(AugmentConfig(enabled=True, randaugment_magnitude=30), (3, 32, 32))
    out = aug._geometric(x, torch.tensor([3, 4]), torch.tensor([1.0, -1.0]))  # 150/331·32 = 14.5 → 14 px
    assert torch.equal(out[0, :, :, 14:], x[0, :, :, :-14]) and (out[0, :, :, :14] == 0).all()
    assert torch.equal(out[1, :, :-14, :], x[1, :, 14:, :]) and (out[1, :, -14:, :] == 0).all()


def test_photometric_operations_by_hand():
    img = torch.tensor([0.2, 0.5, 0.8, 0.6]).view(1, 1, 2, 2)
    assert torch.allclose(solarize(img, 0.55), torch.tensor([0.2, 0.5, 0.2, 0.4]).view(1, 1, 2, 2))
    assert torch.allclose(posterize(img, 1), torch.tensor([0.0, 0.5, 0.5, 0.5]).view(1, 1, 2, 2))
    assert torch.allclose(autocontrast(img), torch.tensor([0.0, 0.5, 1.0, 2 / 3]).view(1, 1, 2, 2))
    flat = torch.full((1, 1, 2, 2), 0.3)
    assert torch.equal(autocontrast(flat), flat)  # a constant channel is left as is
    aug = Augmenter(AugmentConfig(enabled=True, randaugment_magnitude=30), (1, 2, 2))
    up = aug._photometric(6, img, torch.tensor([1.0]))  # brightness × 1.9, clamped
    assert torch.allclose(up, torch.tensor([0.38, 0.95, 1.0, 1.0]).view(1, 1, 2, 2))
    # contrast ×0.1 around the image mean 0.525
    low = aug._photometric(8, img, torch.tensor([-1.0]))
    assert torch.allclose(low, 0.1 * img + 0.9 * 0.525)
    # colour (saturation) leaves a grey image unchanged, as torchvision does
    assert torch.equal(aug._photometric(7, img, torch.tensor([1.0])), img)


def test_equalize_by_hand():
    # 1024 pixels, half at level 10 and half at 20: step = 512 // 255 = 2,
    # lut = (cumsum + 1) // 2 shifted by one level → level 10 ↦ 0, level 20 ↦ 256 → 255
    img = torch.full((1, 1, 32, 32), 10 / 255)
    img[:, :, 16:] = 20 / 255
    out = equalize(img)
    assert torch.equal(out[0, 0, :16], torch.zeros(16, 32)) and torch.equal(out[0, 0, 16:], torch.ones(16, 32))
    small = torch.full((1, 1, 4, 4), 10 / 255)
    small[:, :, 2:] = 20 / 255
    assert torch.equal(equalize(small), small)  # step 0: unchanged


def test_random_erasing_fills_one_rectangle_of_the_drawn_area():
    cfg = AugmentConfig(enabled=True, flip=0.0, randaugment_ops=0, erase_prob=1.0, erase_value=[0.5, 0.25])
    aug = Augmenter(cfg, (2, 16, 16))
    out = aug(torch.zeros(40, 2 * 16 * 16), torch.Generator().manual_seed(3)).view(40, 2, 16, 16)
    for img in out:
        box = img[0] == 0.5
        assert torch.equal(box, img[1] == 0.25)
        rows, cols = box.any(1).nonzero().squeeze(1), box.any(0).nonzero().squeeze(1)
        h, w = len(rows), len(cols)
        assert h > 0 and int(box.sum()) == h * w  # one filled rectangle
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w
        assert 0.02 * 256 - 16 <= h * w <= 0.33 * 256 + 16  # area fraction in [0.02, 0.33] up to rounding
        assert 0.3 / 1.5 <= h / w <= 3.3 * 1.5


def test_same_seed_same_batch_other_seed_other_batch():
    cfg = AugmentConfig(enabled=True, crop_scale=0.5, randaugment_ops=2, randaugment_magnitude=12, jitter=0.2, erase_prob=0.5)
    aug = Augmenter(cfg, (3, 12, 12))
    x = torch.rand(16, 3 * 12 * 12, generator=torch.Generator().manual_seed(0))
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1


def engine_cfg(tmp_path, **augment):
    return parse_config({
        "name": "aug",
        "data": {"source": "digits"},
        "model": {"name": "convmixer", "hdim": 8, "depth": 1},
        "optim": {"name": "sgd", "lr": 0.01},
        "augment": {"enabled": True, "crop_scale": 0.6, "randaugment_ops": 1, **augment},
        "benchmark": {"num_tasks": 1},
        "train": {"epochs_per_task": 2, "batch_size": 128, "threads": 1},
        "output": {"dir": str(tmp_path / "runs"), "progress": False, "plots": False},
    })


def test_engine_draws_per_epoch_and_repeats_under_the_seed(tmp_path):
    from sdmcl.train.engine import Engine, prepare
    from sdmcl.train.rundir import RunDir

    cfg = engine_cfg(tmp_path)
    prepared = prepare(cfg)
    seen: list[torch.Tensor] = []

    def inputs_of_epoch(epoch: int) -> torch.Tensor:
        engine = Engine(prepared, RunDir(tmp_path / "unused"), progress=False, log=lambda s: None)
        engine.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
        seen.clear()
        engine.train_epoch(prepared.tasks[0], epoch)
        return torch.cat(seen)

    first, again, second = inputs_of_epoch(0), inputs_of_epoch(0), inputs_of_epoch(1)
    assert torch.equal(first, again)  # the same (seed, task, epoch) draws the same augmentations
    assert not torch.equal(first, second)
    # the data order is seeded the same way; compare as sets of images: augmented, not reordered
    raw = prepared.tasks[0].train_x
    assert first.shape == raw.shape and not torch.equal(first.sort(0).values, raw.sort(0).values)


def test_augment_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"augment.crop_scale: must be in \(0, 1\]"):
        engine_cfg(tmp_path, crop_scale=0.0)
    with pytest.raises(ConfigError, match="augment.randaugment_magnitude: must be in 0..30"):
        engine_cfg(tmp_path, randaugment_magnitude=31)
    with pytest.raises(ConfigError, match="augment.erase_value: 2 values for images with 3 channel"):
        Augmenter(AugmentConfig(enabled=True, erase_value=[0.1, 0.2]), (3, 4, 4))
    with pytest.raises(ConfigError, match=r"needs images \(channels, height, width\).*\(256,\)"):
        Augmenter(AugmentConfig(enabled=True), (256,))


def test_sdmlp_on_augmented_pixels_prepares_each_augmented_batch(tmp_path):
    """A model with a fixed input transform (SDMLP: relu, L2 norm) gets it applied after the
    augmentation, minibatch by minibatch."""
    from sdmcl.train.engine import Engine, prepare
    from sdmcl.train.rundir import RunDir

    cfg = parse_config({
        "data": {"source": "digits"}, "model": {"name": "sdmlp", "neurons": 32, "k": 3},
        "augment": {"enabled": True, "crop_scale": 0.6}, "benchmark": {"num_tasks": 1},
        "train": {"epochs_per_task": 1, "threads": 1}, "output": {"dir": str(tmp_path), "progress": False},
    })
    prepared = prepare(cfg)
    engine = Engine(prepared, RunDir(tmp_path / "unused"), progress=False, log=lambda s: None)
    seen = []
    engine.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append((args[0].clone(), kwargs)), with_kwargs=True)
    engine.train_epoch(prepared.tasks[0], 0)
    x, kwargs = seen[0]
    assert kwargs == {"prepared": True}
    assert torch.allclose(x.norm(dim=1), torch.ones(len(x)), atol=1e-5)
    raw = engine.model.prepare_inputs(prepared.tasks[0].train_x)
    assert not any(torch.allclose(x[:1], raw[i : i + 1]) for i in range(len(raw)))  # augmented, then prepared

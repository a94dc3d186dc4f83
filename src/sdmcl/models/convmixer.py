"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?", 2022), the image backbone of the paper.

Input images (B, C, H, W) in [0, 1] (flattened inputs are reshaped with the data's image
shape), optionally normalised per channel inside the model (`input_mean`, `input_std`), then
    patch embedding: Conv2d(C, hdim, patch, stride patch) → GELU → BatchNorm
    `depth` blocks:  x + BatchNorm(GELU(depthwise Conv2d(hdim, kernel, padding "same")))
                     → pointwise Conv2d(hdim, hdim, 1) → GELU → BatchNorm
    global average pool → the embedding (B, hdim) → Linear(hdim, C) head.
The reference's sizes are the defaults: hdim 256, depth 8, patch 2, kernel 5. `embed(x)` is
the pooled embedding (what `sdmcl embed` stores and the embedding benchmarks learn from).
The normalisation lives in the model so that a saved model embeds raw [0, 1] pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sdmcl.errors import ConfigError
from sdmcl.models.base import ModelConfig
from sdmcl.registry import register_model

# The reference normalised CIFAR-10 and ImageNet32 pixels with CIFAR-10's channel statistics
# whenever it augmented (its ConvMixer pretraining "with transforms").
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


@dataclass
class ConvTrunkConfig(ModelConfig):
    """The ConvMixer trunk's keys, shared by `convmixer` and `convsdm`."""

    hdim: int = 256  # channels of every layer = the embedding size
    depth: int = 8  # mixer blocks
    patch_size: int = 2
    kernel_size: int = 5  # depthwise convolution
    input_mean: list[float] | None = None  # per-channel normalisation (x − mean)/std inside the model; null: none
    input_std: list[float] | None = None

    def check_trunk(self) -> None:
        for key in ("hdim", "patch_size", "kernel_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}: must be >= 1, got {getattr(self, key)}")
        if self.depth < 0:
            raise ConfigError(f"model.depth: must be >= 0, got {self.depth}")
        if (self.input_mean is None) != (self.input_std is None):
            raise ConfigError("model.input_mean / model.input_std: give both (one value per channel) or neither")
        if self.input_std is not None and not all(s > 0 for s in self.input_std):
            raise ConfigError(f"model.input_std: every value must be > 0, got {self.input_std}")
        if self.input_mean is not None and len(self.input_mean) != len(self.input_std):
            raise ConfigError(f"model.input_mean has {len(self.input_mean)} values but model.input_std {len(self.input_std)}")


@dataclass
class ConvMixerConfig(ConvTrunkConfig):
    name: str = "convmixer"

    def check(self) -> None:
        self.check_trunk()


def image_shape(cfg, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The (C, H, W) the trunk takes, or a one-line error naming the mismatch."""
    if len(input_shape) != 3:
        raise ConfigError(f"model.name: {cfg.name} takes images (channels, height, width), but the data source gives "
                          f"inputs of shape {tuple(input_shape)}; choose an image source (mnist, fashion-mnist, cifar10, "
                          "cifar100, imagenet32, digits)")
    c, h, w = input_shape
    if min(h, w) < cfg.patch_size:
        raise ConfigError(f"model.patch_size: {cfg.patch_size} is larger than the {h}x{w} images")
    if cfg.input_mean is not None and len(cfg.input_mean) != c:
        raise ConfigError(f"model.input_mean: {len(cfg.input_mean)} values for images with {c} channel(s)")
    return int(c), int(h), int(w)


class MixerBlock(nn.Module):
    def __init__(self, hdim: int, kernel_size: int):
        super().__init__()
        self.depthwise = nn.Conv2d(hdim, hdim, kernel_size, groups=hdim, padding="same")
        self.norm1 = nn.BatchNorm2d(hdim)
        self.pointwise = nn.Conv2d(hdim, hdim, kernel_size=1)
        self.norm2 = nn.BatchNorm2d(hdim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.norm1(self.act(self.depthwise(x)))
        return self.norm2(self.act(self.pointwise(x)))


class ConvMixerTrunk(nn.Module):
    """Images (or their flattened rows) → embeddings (B, hdim)."""

    def __init__(self, cfg: ConvTrunkConfig, input_shape: tuple[int, int, int]):
        super().__init__()
        self.input_shape = input_shape
        c = input_shape[0]
        if cfg.input_mean is not None:
            self.register_buffer("input_mean", torch.tensor(cfg.input_mean, dtype=torch.float32).view(1, c, 1, 1))
            self.register_buffer("input_std", torch.tensor(cfg.input_std, dtype=torch.float32).view(1, c, 1, 1))
        else:
            self.input_mean = self.input_std = None
        self.patches = nn.Conv2d(c, cfg.hdim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.patch_norm = nn.BatchNorm2d(cfg.hdim)
        self.act = nn.GELU()
        self.blocks = nn.Sequential(*[MixerBlock(cfg.hdim, cfg.kernel_size) for _ in range(cfg.depth)])
        # channels-last activations and kernels: 1.5-1.7x faster training steps on CPU here
        # (benchmarks/convmixer_layout.py), and the layout GPU convolutions prefer; same
        # values up to rounding
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, *self.input_shape).contiguous(memory_format=torch.channels_last)
        if self.input_mean is not None:
            x = (x - self.input_mean) / self.input_std
        x = self.blocks(self.patch_norm(self.act(self.patches(x))))
        return x.mean((2, 3))


class ConvMixer(nn.Module):
    supports_mixed_precision = True

    def __init__(self, cfg: ConvMixerConfig, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.trunk = ConvMixerTrunk(cfg, input_shape)
        self.head = nn.Linear(cfg.hdim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features after global average pooling, before the head: (B, hdim)."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def reset_head(self, num_classes: int) -> None:
        old = self.head
        self.head = nn.Linear(old.in_features, num_classes).to(old.weight.device)


@register_model("convmixer", ConvMixerConfig, "ConvMixer image backbone (Trockman & Kolter), linear head; embed() = pooled features")
def build(cfg: ConvMixerConfig, input_dim: int, num_classes: int, input_shape: tuple[int, ...] = ()) -> ConvMixer:
    return ConvMixer(cfg, image_shape(cfg, input_shape), num_classes)

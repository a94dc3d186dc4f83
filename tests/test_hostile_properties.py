"""Property-based hostile-input tests (hypothesis).

Generated configs (wrong types, out-of-range and non-finite numbers, unknown and misspelled
keys at every level, odd YAML) and damaged files of every kind the tool reads (YAML
configs, IDX, CIFAR batches, embedding files, checkpoints, summary.json, metrics.jsonl,
a run's config.yaml). The property, for every case:

    exit 0 with a finished run, or exit 2/3 with one stderr line naming the key or file;
    never a traceback, never a summary.json for a failed run, no earlier result changed.

Runs are tiny (digits, 16 neurons, 1 epoch) and the memory the preflight sees is capped at
1 GiB, so an absurd size is refused quickly instead of trained. The CI profile runs a fixed
set of examples; SDMCL_HYPOTHESIS_PROFILE=long runs many more (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import pickle
import shutil
import struct
import tempfile
import typing
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import GENERATED_CASES, examples
from hostile_common import TINY, assert_clean_outcome, cli, snapshot, summaries, tiny, write_config

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MEMORY_CAP = 2**30


def count_case(test: str) -> None:
    GENERATED_CASES[test] = GENERATED_CASES.get(test, 0) + 1


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A working directory with an earlier finished run (which must never change), a
    pretrained model.pt and a run stopped after its first task; memory capped at 1 GiB."""
    from sdmcl import preflight

    root = tmp_path_factory.mktemp("hostile")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setattr(preflight, "available_memory", lambda device: (MEMORY_CAP, "available (test cap)"))
    mp.setenv("SDMCL_DATA_DIR", str(root / "cache"))
    runs = root / "runs"
    earlier = write_config(root / "earlier.yaml", tiny(runs, name="earlier", seed=7))
    assert cli("run", earlier)[0] == 0
    pre = write_config(root / "pre.yaml", tiny(root / "pre", name="pre", benchmark={"joint": True, "num_tasks": None}))
    assert cli("run", pre)[0] == 0
    stop_cfg = tiny(root / "stopped", name="stopped", regularizer={"name": "ewc"}, train={"epochs_per_task": 2},
                    output={"checkpoint_every": 1})
    stop = write_config(root / "stop.yaml", stop_cfg)
    mp.setenv("SDMCL_FAULT", "step:8:SIGINT")
    assert cli("run", stop)[0] == 130
    mp.delenv("SDMCL_FAULT")
    w = dict(root=root, runs=runs, earlier=next(runs.iterdir()), model_pt=next((root / "pre").iterdir()) / "model.pt",
             stopped=next((root / "stopped").iterdir()), finished_cfg=earlier)
    w["earlier_snapshot"] = snapshot(w["earlier"])
    yield w
    mp.undo()


def scratch(world) -> Path:
    return Path(tempfile.mkdtemp(dir=world["root"]))


def check(world, code, out, err, before) -> None:
    assert_clean_outcome(code, out, err, before, summaries(world["root"]))
    assert snapshot(world["earlier"]) == world["earlier_snapshot"], "an earlier result changed"


def run_checked(world, *args) -> tuple[int, str, str]:
    before = summaries(world["root"])
    code, out, err = cli(*args)
    check(world, code, out, err, before)
    return code, out, err


# ---------------------------------------------------------------- generated configs

def _schema():
    """Every configurable key: section → {field: type} for the run sections, every model and
    every regularizer (read from the config dataclasses, so new fields are tested too)."""
    from sdmcl.config import BenchmarkConfig, DataConfig, OptimConfig, OutputConfig, RunConfig, TrainConfig
    from sdmcl.registry import MODELS, REGULARIZERS, load_all

    load_all()

    def fields(cls):
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    top = {k: v for k, v in fields(RunConfig).items() if k in ("name", "seed", "init_from")}
    sections = {"data": fields(DataConfig), "benchmark": fields(BenchmarkConfig), "optim": fields(OptimConfig),
                "train": fields(TrainConfig), "output": fields(OutputConfig)}
    models = {n: fields(e.config_class) for n, e in MODELS.items()}
    regs = {n: fields(e.config_class) for n, e in REGULARIZERS.items()}
    return top, sections, models, regs


TOP, SECTIONS, MODELS_SCHEMA, REGS_SCHEMA = _schema()
# keys whose large valid values only make a run long, not wrong: kept small
SMALL_ONLY = {"train.epochs_per_task": st.integers(-2, 2), "model.phase_epochs": st.integers(-1, 2),
              "model.k_transition_epochs": st.integers(-1, 3)}
# keys that point at places: hostile paths inside the test's directory only (never '/')
PATH_KEYS = {"output.dir", "data.path", "data.data_dir", "init_from"}

EDGE_INTS = st.sampled_from([-(2**63) - 1, -(2**31), -1, 0, 1, 2, 3, 7, 17, 255, 4096, 2**31, 2**40, 2**63 - 1, 2**63, 10**30])
EDGE_FLOATS = st.one_of(st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e-300, 1e300, 0.5, 1.5, -1.0, 1e-3]),
                        st.floats(allow_nan=True, allow_infinity=True))
ODD_TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", "auto", "cpu", "gpu", "cuda:abc", "cuda:7", "mps", "natural",
                                                           "seeded", "sdmlp", "none", "ewc", "a\x00b", "~", "x" * 300, "é" * 130]))
ANY_VALUE = st.one_of(st.none(), st.booleans(), EDGE_INTS, st.integers(), EDGE_FLOATS, ODD_TEXT,
                      st.lists(st.one_of(st.integers(-3, 12), st.booleans(), st.text(max_size=2)), max_size=5),
                      st.dictionaries(st.text(max_size=4), st.integers(-2, 2), max_size=2))


def _typed_values(tp):
    """Values near what a field of type `tp` accepts (the edges of its type)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return st.one_of(st.sampled_from(typing.get_args(tp)), ODD_TEXT)
    if tp is bool:
        return st.one_of(st.booleans(), st.sampled_from(["yes", "on", 1, 0]))
    if tp is int or tp is float:
        return st.one_of(EDGE_INTS, EDGE_FLOATS)
    if origin is list:
        return st.lists(st.one_of(EDGE_INTS, st.integers(-2, 12)), max_size=6)
    return ANY_VALUE


@st.composite
def hostile_path(draw, root: Path):
    kind = draw(st.sampled_from(["missing", "file", "file-parent", "long", "dir", "empty", "relative"]))
    if kind == "missing":
        return str(root / "no" / "such" / "place")
    if kind == "file":
        (root / "afile").write_text("x")
        return str(root / "afile")
    if kind == "file-parent":
        (root / "afile").write_text("x")
        return str(root / "afile" / "below")
    if kind == "long":
        return str(root / ("d" * 300))
    if kind == "dir":
        return str(root)
    if kind == "empty":
        return ""
    return draw(st.text(alphabet="abc._-", min_size=1, max_size=8))


def _misspell(draw, key: str) -> str:
    how = draw(st.sampled_from(["drop", "double", "swap", "case", "random"]))
    if how == "random" or len(key) < 2:
        return draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10))
    i = draw(st.integers(0, len(key) - 2))
    if how == "drop":
        return key[:i] + key[i + 1:]
    if how == "double":
        return key[:i] + key[i] + key[i:]
    if how == "swap":
        return key[:i] + key[i + 1] + key[i] + key[i + 2:]
    return key.upper()


@st.composite
def hostile_config(draw, root: Path):
    cfg = tiny(root / "runs")
    cfg["data"]["download"] = False
    if draw(st.booleans()):
        cfg["model"] = {"name": draw(st.sampled_from(sorted(MODELS_SCHEMA)))}
    if draw(st.booleans()):
        cfg["regularizer"] = {"name": draw(st.sampled_from(sorted(REGS_SCHEMA)))}
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["set", "set", "set", "unknown", "section"]))
        model, reg = cfg.get("model"), cfg.get("regularizer")
        model_fields = MODELS_SCHEMA.get(str(model.get("name")), {}) if isinstance(model, dict) else {}
        reg_fields = REGS_SCHEMA.get(str(reg.get("name", "none")), {}) if isinstance(reg, dict) else {}
        keys = ([(None, k, t) for k, t in TOP.items()] + [(s, k, t) for s, f in SECTIONS.items() for k, t in f.items()]
                + [("model", k, t) for k, t in model_fields.items()] + [("regularizer", k, t) for k, t in reg_fields.items()])
        section, key, tp = draw(st.sampled_from(keys))
        dotted = f"{section}.{key}" if section else key
        if what == "set":
            if dotted in PATH_KEYS:
                value = draw(hostile_path(root))
            elif dotted in SMALL_ONLY:
                value = draw(SMALL_ONLY[dotted])
            elif dotted == "data.download":
                value = draw(st.sampled_from([False, "yes", 1, None]))
            else:
                value = draw(st.one_of(_typed_values(tp), ANY_VALUE))
            node = cfg if section is None else cfg.setdefault(section, {})
            if isinstance(node, dict):
                node[key] = value
        elif what == "unknown":
            node = cfg if section is None else cfg.setdefault(section, {})
            if isinstance(node, dict):
                node[_misspell(draw, key)] = draw(st.integers(0, 3))
        else:
            cfg[draw(st.sampled_from(list(SECTIONS) + ["model", "regularizer"]))] = draw(ANY_VALUE)
    if draw(st.integers(0, 4)) == 0:  # experiment keys: seeds and variants
        cfg["seeds"] = draw(st.one_of(st.lists(st.one_of(st.integers(-2, 3), EDGE_INTS), max_size=2), ANY_VALUE))
    if draw(st.integers(0, 4)) == 0:
        dotted = [f"{s}.{k}" for s, f in SECTIONS.items() for k in f if f"{s}.{k}" not in PATH_KEYS | set(SMALL_ONLY)]
        change = st.one_of(st.dictionaries(st.sampled_from(dotted + ["model", "regularizer", "model.k", "seeds"]), ANY_VALUE, max_size=2),
                           ANY_VALUE)
        cfg["variants"] = draw(st.one_of(st.dictionaries(st.text(max_size=6), change, min_size=1, max_size=2), ANY_VALUE))
    return cfg


@settings(max_examples=examples(70))
@given(data=st.data())
def test_generated_configs(world, data):
    count_case("configs")
    root = scratch(world)
    (root / "runs").mkdir()  # an existing output directory: names are looked up in it
    cfg = data.draw(hostile_config(root))
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    run_checked(world, "run", path)


# odd YAML: a line appended or prepended to a valid config, or the text reshaped
ODD_KEYS = st.sampled_from(["name", "seed", "model", "optim", "train", "extra", "on", "yes", "1", "~", "1e3", '"quoted"', "<<"])
ODD_SCALARS = st.sampled_from([
    "2024-01-01", "2001-12-14t21:59:43.10-05:00", "1e-3", "5E4", ".5e2", "-1e400", ".nan", ".inf", "010", "0o17", "0x1F", "1:30",
    "190:20:30.15", "1_000", "!!binary aGVsbG8=", "!!set {a, b}", "!!omap [a: 1]", "!!pairs [a: 1]", "!!timestamp 2020-01-01",
    "!!python/object/apply:os.system [echo]", "!custom x", "!!str 2024-01-01", "!!float 1", "&a 1", "*a", "&a [*a]", "[*b]",
    "{<<: {k: 3}}", "yes", "no", "on", "off", "~", "null", "''", '"\\0"', "|\n  block", ">\n  folded", "[1, [2, [3]]]",
    "{a: 1, a: 2}", "[", "]", "{", "'unterminated", "@reserved", "`tick", "%TAG", "? complex", "- list item", "a: b: c",
])


@st.composite
def odd_yaml(draw, root: Path):
    base = yaml.safe_dump(tiny(root / "runs"), sort_keys=False)
    kind = draw(st.sampled_from(["line", "line", "line", "nested", "structure"]))
    if kind == "line":
        line = f"{draw(ODD_KEYS)}: {draw(ODD_SCALARS)}\n"
        return (line + base) if draw(st.booleans()) else (base + line)
    if kind == "nested":
        section = draw(st.sampled_from(["model", "optim", "train"]))
        return base.replace(f"{section}:\n", f"{section}:\n  {draw(ODD_KEYS)}: {draw(ODD_SCALARS)}\n", 1)
    shape = draw(st.sampled_from(["two-docs", "tabs", "crlf", "bom", "nul", "deep", "long-line", "latin1", "flow", "only-doc-marker"]))
    return {
        "two-docs": base + "---\nname: second\n",
        "tabs": base.replace("  ", "\t", 1),
        "crlf": base.replace("\n", "\r\n"),
        "bom": "\ufeff" + base,
        "nul": base + "\x00",
        "deep": base + "extra: " + "[" * 300 + "]" * 300 + "\n",
        "long-line": base + "name: " + "x" * 100_000 + "\n",
        "latin1": base.replace("tiny", "tïny"),
        "flow": json.dumps(tiny(root / "runs")),
        "only-doc-marker": "---\n...\n",
    }[shape]


@settings(max_examples=examples(40))
@given(data=st.data())
def test_odd_yaml(world, data):
    count_case("odd YAML")
    root = scratch(world)
    text = data.draw(odd_yaml(root))
    path = root / "cfg.yaml"
    path.write_bytes(text.encode("latin-1") if "tïny" in text else text.encode("utf-8"))
    run_checked(world, "run", path)


@dataclasses.dataclass(frozen=True)
class Damage:
    """Damage to a file's bytes, drawn independently of the bytes (so failures print short):
    truncation, flipped, inserted or deleted bytes at positions given as fractions of the length."""

    kind: str
    where: tuple[float, ...] = ()
    values: tuple[bytes, ...] = ()

    def __call__(self, raw: bytes) -> bytes:
        if self.kind == "empty" or not raw:
            return b""
        if self.kind == "truncate":
            return raw[: int(self.where[0] * len(raw))]
        data = bytearray(raw)
        for frac, value in zip(self.where, self.values):
            i = int(frac * len(data))
            if self.kind == "flip":
                data[i] ^= value[0]
            elif self.kind == "insert":
                data[i:i] = value
            elif len(data) > 1:
                del data[i]
        return bytes(data)


FRACTION = st.floats(0, 1, exclude_max=True)


@st.composite
def damage(draw) -> Damage:
    kind = draw(st.sampled_from(["truncate", "flip", "flip", "insert", "delete", "empty"]))
    n = 1 if kind == "truncate" else draw(st.integers(1, 4))
    where = tuple(draw(FRACTION) for _ in range(n))
    values = tuple(draw(st.binary(min_size=1, max_size=8).filter(lambda b: b[0] != 0)) for _ in range(n))
    return Damage(kind, where, values)


# overrides that keep any surviving config tiny and inside the test's directory
BOUNDS = ("train.epochs_per_task=1", "benchmark.num_tasks=2", "output.plots=false", "output.progress=false",
          "train.threads=1", "data.download=false")


@settings(max_examples=examples(30))
@given(data=st.data())
def test_damaged_yaml_config(world, data):
    count_case("damaged YAML config")
    root = scratch(world)
    raw = yaml.safe_dump(tiny(root / "runs"), sort_keys=False).encode()
    path = root / "cfg.yaml"
    path.write_bytes(data.draw(damage())(raw))
    run_checked(world, "run", path, *BOUNDS, f"output.dir={root / 'runs'}")


# ---------------------------------------------------------------- data files


@st.composite
def idx_content(draw) -> bytes:
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x07, 0xFF]))
    ndim = draw(st.integers(0, 4))
    dims = draw(st.lists(st.one_of(st.integers(0, 4), st.sampled_from([2**31, 2**32 - 1])), min_size=ndim, max_size=ndim))
    size = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(code, 1)
    n = int(np.prod(dims, dtype=object)) * size if dims else 0
    payload = draw(st.binary(min_size=min(n, 64), max_size=min(n, 64))) if n <= 64 else b"\x00" * 64
    payload = payload + draw(st.binary(max_size=3)) if draw(st.booleans()) else payload
    magic = draw(st.sampled_from([b"\x00\x00", b"\x00\x01", b"\x1f\x8b"]))
    content = magic + bytes([code, ndim]) + b"".join(struct.pack(">I", d) for d in dims) + payload
    return gzip.compress(content) if draw(st.booleans()) else content


@settings(max_examples=examples(150))
@given(content=st.one_of(idx_content(), st.binary(max_size=40)), damaged=st.booleans(), data=st.data())
def test_idx_parser(tmp_path_factory, content, damaged, data):
    """read_idx returns exactly the declared array or raises DataError naming the file."""
    from sdmcl.data.idx import read_idx
    from sdmcl.errors import DataError

    count_case("IDX files")
    if damaged:
        content = data.draw(damage())(content)
    f = tmp_path_factory.getbasetemp() / "case.idx"
    f.write_bytes(content)
    try:
        arr = read_idx(f)
    except DataError as e:
        assert str(f) in str(e) and "\n" not in str(e)
        return
    raw = gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    assert arr.shape == dims


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="needs the Debian Fashion-MNIST files")
@settings(max_examples=examples(6))
@given(data=st.data())
def test_damaged_fashion_mnist_file(world, data):
    """A damaged copy of a real IDX file: refused naming it (checksum or gzip) — or, when the
    damage left the content intact (a gzip header field), trained."""
    count_case("IDX files")
    root = scratch(world)
    folder = root / "fm"
    folder.mkdir()
    victim = data.draw(st.sampled_from(["t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"]))
    for f in FASHION_DIR.iterdir():
        if f.name != victim:
            (folder / f.name).symlink_to(f)
    (folder / victim).write_bytes(data.draw(damage())((FASHION_DIR / victim).read_bytes()))
    code, out, err = run_checked(world, "run", write_config(root / "c.yaml", tiny(root / "runs", data={"source": "fashion-mnist",
                                                                                                       "path": str(folder)})))
    assert code == 0 or victim in err


def _cifar_batch(draw) -> bytes:
    n = draw(st.integers(0, 3))
    shape = draw(st.sampled_from([(n, 3072), (n, 3071), (n, 3, 32, 32), (3072,), (n, 0)]))
    dtype = draw(st.sampled_from([np.uint8, np.uint8, np.int16, np.float32, object]))
    images = np.zeros(shape, dtype=dtype)
    labels = draw(st.one_of(st.lists(st.integers(-2, 12), min_size=n, max_size=n), st.lists(st.integers(0, 9), max_size=5),
                            st.just(np.arange(n, dtype=np.float64) + 0.5), st.text(max_size=3), st.none()))
    batch = {b"data": images, b"labels": labels}
    form = draw(st.sampled_from(["dict", "dict", "missing-labels", "missing-data", "list", "evil"]))
    if form == "missing-labels":
        del batch[b"labels"]
    elif form == "missing-data":
        del batch[b"data"]
    elif form == "list":
        batch = [images, labels]
    elif form == "evil":
        class Evil:
            def __reduce__(self):
                return (print, ("this must never run",))
        batch = {b"data": Evil(), b"labels": []}
    return pickle.dumps(batch, protocol=draw(st.integers(2, 5)))


@settings(max_examples=examples(80))
@given(data=st.data())
def test_cifar_batch_parser(data):
    """parse_batch returns (N, 3, 32, 32) uint8 images and N labels in range, or raises DataError naming the batch."""
    from sdmcl.data.cifar import parse_batch
    from sdmcl.errors import DataError

    count_case("CIFAR batches")
    raw = _cifar_batch(data.draw)
    if data.draw(st.booleans()):
        raw = data.draw(damage())(raw)
    try:
        images, labels = parse_batch(raw, b"labels", 10, "cifar/data_batch_1")
    except DataError as e:
        assert "cifar/data_batch_1" in str(e) and "\n" not in str(e)
        return
    assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32) and labels.shape == (len(images),)
    assert labels.dtype == np.int64 and (labels.size == 0 or (labels.min() >= 0 and labels.max() < 10))


@settings(max_examples=examples(8))
@given(data=st.data())
def test_damaged_cifar_directory(world, data):
    """Through the CLI a CIFAR batch that is not the official file is refused by name."""
    count_case("CIFAR batches")
    root = scratch(world)
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(_cifar_batch(data.draw))
    code, out, err = run_checked(world, "run", write_config(root / "c.yaml", tiny(root / "runs", data={"source": "cifar10",
                                                                                                       "path": str(root)})))
    assert code == 2 and "batch" in err


@st.composite
def embedding_arrays(draw):
    n_train, n_test = draw(st.integers(0, 12)), draw(st.integers(0, 8))
    dim = draw(st.sampled_from([0, 1, 3, 5]))
    x_shape = draw(st.sampled_from(["2d", "2d", "2d", "1d", "3d"]))

    def x(n):
        shape = {"2d": (n, dim), "1d": (n,), "3d": (n, dim, 2)}[x_shape]
        arr = draw(st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.float16]))
        a = np.random.RandomState(n).rand(*shape).astype(arr)
        if draw(st.integers(0, 5)) == 0 and a.size and a.dtype.kind == "f":
            a.flat[0] = draw(st.sampled_from([np.nan, np.inf]))
        return a

    def y(n):
        labels = draw(st.lists(st.one_of(st.integers(-1, 5), st.sampled_from([2**40, 300])), min_size=n, max_size=n))
        y = np.array(labels, dtype=np.int64).astype(draw(st.sampled_from([np.int64, np.int32, np.float32, np.uint8])))
        if draw(st.integers(0, 6)) == 0:
            y = y[:-1] if len(y) else np.array([1.5])
        return y

    return x(n_train), y(n_train), x(n_test), y(n_test)


@settings(max_examples=examples(40))
@given(arrays=embedding_arrays(), data=st.data())
def test_generated_embedding_files(world, arrays, data):
    count_case("embedding files")
    root = scratch(world)
    tx, ty, vx, vy = arrays
    form = data.draw(st.sampled_from(["pt-tuple", "pt-dict", "npz", "one-npz", "pt-wrong", "one-pt-list"]))
    folder = root / "emb"
    folder.mkdir()
    target = folder
    if form == "pt-tuple":
        torch.save((torch.from_numpy(tx), torch.from_numpy(ty)), folder / "train.pt")
        torch.save((torch.from_numpy(vx), torch.from_numpy(vy)), folder / "test.pt")
    elif form == "pt-dict":
        torch.save({"x": torch.from_numpy(tx), "y": torch.from_numpy(ty)}, folder / "all_data_train.pt")
        torch.save({"x": torch.from_numpy(vx), "y": torch.from_numpy(vy)}, folder / "all_data_test.pt")
    elif form == "npz":
        np.savez(folder / "train.npz", x=tx, y=ty)
        np.savez(folder / "test.npz", x=vx, z=vy)  # a wrong key name
    elif form == "one-npz":
        target = folder / "all.npz"
        np.savez(target, train_x=tx, train_y=ty, test_x=vx, test_y=vy, num_classes=np.int64(data.draw(st.integers(-1, 8))))
    elif form == "one-pt-list":
        target = folder / "all.pt"
        torch.save([torch.from_numpy(a) for a in (tx, ty, vx, vy)], target)
    else:
        torch.save({"features": torch.from_numpy(tx)}, folder / "train.pt")
        torch.save((torch.from_numpy(vx), torch.from_numpy(vy), torch.zeros(1)), folder / "test.pt")
    if data.draw(st.integers(0, 3)) == 0:  # and then damage one file's bytes
        victim = target if target.is_file() else data.draw(st.sampled_from(sorted(folder.iterdir())))
        victim.write_bytes(data.draw(damage())(victim.read_bytes()))
    cfg = tiny(root / "runs", data={"source": "embeddings", "path": str(target)}, benchmark={"num_tasks": None})
    run_checked(world, "run", write_config(root / "c.yaml", cfg))


# ---------------------------------------------------------------- checkpoints


def _mutate_checkpoint(draw, ckpt: dict) -> dict:
    """One structural change: a key dropped, a value of another type or shape, non-finite weights."""
    kind = draw(st.sampled_from(["drop", "retype", "reshape", "nan", "format", "position", "config", "extra", "empty-model"]))
    if kind == "drop":
        ckpt.pop(draw(st.sampled_from(sorted(ckpt))), None)
    elif kind == "retype":
        ckpt[draw(st.sampled_from(sorted(ckpt)))] = draw(st.sampled_from([None, 3, "x", [1], {"a": 1}, 1.5]))
    elif kind in ("reshape", "nan"):
        name = draw(st.sampled_from(sorted(ckpt["model"])))
        t = ckpt["model"][name]
        if kind == "nan" and t.is_floating_point() and t.numel():
            t = t.clone()
            t.view(-1)[0] = float(draw(st.sampled_from(["nan", "inf"])))
        else:
            t = torch.zeros(draw(st.sampled_from([(0,), (3,), (2, 2), tuple(t.shape[::-1]) or (1,)])), dtype=t.dtype)
        ckpt["model"][name] = t
    elif kind == "format":
        ckpt["format"] = draw(st.sampled_from([0, 2, "1", None]))
    elif kind == "position" and isinstance(ckpt.get("position"), dict):
        pos = ckpt["position"]
        key = draw(st.sampled_from(sorted(pos)))
        pos[key] = draw(st.sampled_from([-1, 0, 1, 99, 2**62, "1", None, 1.5, [], [[0.5]], [[0.5, 0.5]], [{"task": 0}], True]))
    elif kind == "config":
        ckpt["config"] = draw(st.sampled_from([None, {}, {"model": 3}, {"model": {"name": "relu_mlp"}}, [1]]))
    elif kind == "extra":
        ckpt[draw(st.text(max_size=5))] = torch.zeros(2)
    else:
        ckpt["model"] = {}
    return ckpt


def damaged_checkpoint(draw, path: Path) -> bytes:
    """The checkpoint's bytes damaged, or its content changed in structure and saved again."""
    if draw(st.booleans()):
        return draw(damage())(path.read_bytes())
    ckpt = _mutate_checkpoint(draw, torch.load(path, weights_only=True))
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


@settings(max_examples=examples(30))
@given(data=st.data())
def test_damaged_init_from_checkpoint(world, data):
    count_case("checkpoints")
    root = scratch(world)
    bad = root / "model.pt"
    bad.write_bytes(damaged_checkpoint(data.draw, world["model_pt"]))
    code, out, err = run_checked(world, "run", write_config(root / "c.yaml", tiny(root / "runs", init_from=str(bad))))
    assert code == 0 or str(bad) in err


@settings(max_examples=examples(30))
@given(data=st.data())
def test_damaged_resume_checkpoint(world, data):
    count_case("checkpoints")
    root = scratch(world)
    run_dir = root / world["stopped"].name
    shutil.copytree(world["stopped"], run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(damaged_checkpoint(data.draw, last))
    code, out, err = run_checked(world, "run", "--resume", run_dir)
    assert code == 0 or "last.pt" in err


@settings(max_examples=examples(25))
@given(data=st.data())
def test_damaged_run_config_yaml(world, data):
    """A run directory's config.yaml damaged, then resumed: refused naming it or the key —
    or resumed when the damage only touched keys that do not change results."""
    count_case("run config.yaml")
    root = scratch(world)
    run_dir = root / world["stopped"].name
    shutil.copytree(world["stopped"], run_dir)
    cfg_file = run_dir / "config.yaml"
    cfg_file.write_bytes(data.draw(damage())(cfg_file.read_bytes()))
    run_checked(world, "run", "--resume", run_dir)


# ---------------------------------------------------------------- summary.json and metrics.jsonl


def _json_mutation(draw, obj):
    """A JSON value with one entry dropped, retyped or made non-finite."""
    if not isinstance(obj, dict) or not obj:
        return obj
    key = draw(st.sampled_from(sorted(obj)))
    kind = draw(st.sampled_from(["drop", "retype"]))
    if kind == "drop":
        obj.pop(key)
    else:
        obj[key] = draw(st.sampled_from([None, "x", -1, 2, 1.5, float("nan"), float("inf"), [], [0.5, "a"], [2.0], {}, True]))
    return obj


@settings(max_examples=examples(30))
@given(data=st.data())
def test_damaged_summary(world, data):
    """`report` lists a run with a damaged summary.json under the table instead of in it; `run`
    of its config refuses it by name."""
    count_case("summary.json")
    root = scratch(world)
    out_dir = root / "runs"
    victim = out_dir / world["earlier"].name  # a copy of a finished run, where its config (output.dir moved) finds it
    shutil.copytree(world["earlier"], victim)
    cfg_path = write_config(root / "c.yaml", {**yaml.safe_load(world["finished_cfg"].read_text()), "output": {
        "dir": str(out_dir), "plots": False, "progress": False}})
    s = victim / "summary.json"
    if data.draw(st.booleans()):
        s.write_bytes(data.draw(damage())(s.read_bytes()))
    else:
        s.write_text(json.dumps(_json_mutation(data.draw, json.loads(s.read_text()))))
    code, out, err = cli("report", victim, world["model_pt"].parent)  # beside another finished run
    assert code == 0 and "pre" in out and "Traceback" not in err + out, err
    assert "earlier" in out or f"{victim}: corrupt: summary.json: " in out  # in the table, or listed under it
    before = snapshot(victim)
    code, out, err = run_checked(world, "run", cfg_path)
    assert code == 0 or str(s) in err
    assert snapshot(victim) == before


@settings(max_examples=examples(60))
@given(data=st.data())
def test_metrics_reader(world, data):
    """read_metrics returns the validated evaluations or raises one UserError naming the file and line."""
    from sdmcl.errors import UserError
    from sdmcl.train.rundir import METRICS_FIELDS, read_metrics

    count_case("metrics.jsonl")
    root = scratch(world)
    shutil.copytree(world["earlier"], root / "r")
    m = root / "r" / "metrics.jsonl"
    if data.draw(st.booleans()):
        m.write_bytes(data.draw(damage())(m.read_bytes()))
    else:
        lines = m.read_text().splitlines()
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i] = json.dumps(_json_mutation(data.draw, json.loads(lines[i])))
        m.write_text("\n".join(lines) + "\n")
    try:
        entries = read_metrics(root / "r")
    except UserError as e:
        assert str(m) in str(e) and "\n" not in str(e)
        return
    for entry in entries:
        assert all(key in entry for key in METRICS_FIELDS)

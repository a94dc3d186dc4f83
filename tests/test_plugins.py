"""Extension without editing sdmcl: registered data sources, `--import`, `sdmcl.plugins` entry points."""

import sys
import textwrap

import numpy as np
import pytest

from sdmcl import plugins, registry
from sdmcl.cli import main
from sdmcl.data.dataset import Dataset
from sdmcl.data.sources import DataSource, load_dataset
from sdmcl.errors import DataError

PLUGIN = '''
import numpy as np
from dataclasses import dataclass
from torch import nn
from sdmcl.data.dataset import Dataset
from sdmcl.data.sources import DataSource
from sdmcl.models.base import ModelConfig
from sdmcl.registry import register_data_source, register_model


class Stripes(DataSource):
    """4 classes of 6x6 images: class c lights row c (plus fixed noise)."""

    def load(self, path=None, data_dir=None, pixel_scale="unit", download=True, checks=None):
        rng = np.random.default_rng(0)
        y = np.repeat(np.arange(4), 30)
        x = rng.uniform(0, 0.2, (120, 1, 6, 6)).astype(np.float32)
        x[np.arange(120), 0, y] += 0.8
        return Dataset(self.name, x[::2], y[::2], x[1::2], y[1::2], 4, (1, 6, 6))


register_data_source(Stripes("{source}", "toy stripes from a plugin"))


@dataclass
class LinearConfig(ModelConfig):
    name: str = "{model}"


@register_model("{model}", LinearConfig, "a linear classifier from a plugin")
def build(cfg, input_dim, num_classes):
    return nn.Linear(input_dim, num_classes)
'''


@pytest.fixture
def isolated(monkeypatch):
    """Registrations and modules added by a test are removed afterwards."""
    registry.load_all()  # built-ins registered first: they stay after the test
    tables = (registry.MODELS, registry.REGULARIZERS, registry.DATA_SOURCES, registry.LOGGERS)
    before = [dict(t) for t in tables]
    modules = set(sys.modules)
    monkeypatch.setattr(plugins, "imported", [])
    yield
    for table, old in zip(tables, before):
        table.clear()
        table.update(old)
    for name in set(sys.modules) - modules:
        if name.startswith("sdmcl_test_plugin"):
            del sys.modules[name]


def test_a_registered_source_is_loaded_and_checked(isolated):
    class Squares(DataSource):
        def load(self, path=None, data_dir=None, pixel_scale="unit", download=True, checks=None):
            x = np.zeros((4, 2), np.float32)
            return Dataset(self.name, x, np.array([0, 1, 0, 1]), x, np.array([0, 1, 0, 1]), 2, (2,))

    registry.register_data_source(Squares("squares", "test"))
    data = load_dataset("squares")
    assert data.train_x.shape == (4, 2) and data.num_classes == 2

    class Broken(DataSource):
        def load(self, **kwargs):
            return Dataset(self.name, np.zeros((3, 2), np.float32), np.array([0, 1]), np.zeros((1, 2), np.float32),
                           np.array([5]), 2, (2,))

    registry.register_data_source(Broken("broken", "test"))
    with pytest.raises(DataError, match="data source 'broken': 3 train inputs but labels of shape \\(2,\\)"):
        load_dataset("broken")
    with pytest.raises(TypeError, match="DataSource instance"):
        registry.register_data_source(Squares)


def test_import_option_registers_a_model_and_a_source_for_the_cli(tmp_path, monkeypatch, capsys, isolated):
    (tmp_path / "sdmcl_test_plugin_cli.py").write_text(PLUGIN.format(source="stripes", model="linear"))
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        name: plug
        data: {{source: stripes}}
        model: {{name: linear}}
        optim: {{lr: 0.5}}
        train: {{epochs_per_task: 3, batch_size: 16, threads: 1}}
        output: {{dir: {tmp_path / "runs"}, plots: false}}
    """))
    monkeypatch.chdir(tmp_path)  # --import searches the current directory first
    assert main(["run", str(cfg), "--no-progress"]) == 2
    assert "model.name: unknown model 'linear'" in capsys.readouterr().err  # not without the plugin
    assert main(["--import", "sdmcl_test_plugin_cli", "run", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "plug: final average accuracy" in out and "2 tasks" in out
    assert main(["--import", "sdmcl_test_plugin_cli", "list"]) == 0
    listing = capsys.readouterr().out
    assert "linear         a linear classifier from a plugin" in listing and "stripes        toy stripes" in listing
    assert main(["--import", "sdmcl_test_plugin_cli", "data", "list"]) == 0
    assert "stripes" in capsys.readouterr().out
    assert plugins.imported == ["sdmcl_test_plugin_cli"]


def test_import_errors_are_one_line(tmp_path, monkeypatch, capsys, isolated):
    monkeypatch.chdir(tmp_path)
    assert main(["--import", "sdmcl_test_plugin_nowhere", "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no module named 'sdmcl_test_plugin_nowhere'" in err
    (tmp_path / "sdmcl_test_plugin_bad.py").write_text("import numpy\nraise RuntimeError('boom')\n")
    assert main(["--import", "sdmcl_test_plugin_bad", "list"]) == 2
    assert "--import sdmcl_test_plugin_bad: importing it failed (RuntimeError: boom)" in capsys.readouterr().err
    assert main(["--import", "my_plugin.py", "list"]) == 2
    assert "give a module name, not a file (e.g. --import my_plugin)" in capsys.readouterr().err


def install_entry_point(site, dist: str, module: str, code: str) -> None:
    """An installed distribution as importlib.metadata sees it: dist-info with entry_points.txt."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[sdmcl.plugins]\n{dist} = {module}\n")
    (site / f"{module}.py").write_text(code)


def test_entry_point_plugins_load_with_the_registries(tmp_path, monkeypatch, isolated):
    site = tmp_path / "site"
    install_entry_point(site, "sdmcl-test-plugin-ep", "sdmcl_test_plugin_ep", PLUGIN.format(source="ep-stripes", model="ep_linear"))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    registry.load_all()
    assert "ep_linear" in registry.MODELS and "ep-stripes" in registry.DATA_SOURCES
    assert load_dataset("ep-stripes").test_x.shape == (60, 1, 6, 6)


def test_a_broken_entry_point_names_its_package(tmp_path, monkeypatch, capsys, isolated):
    site = tmp_path / "site"
    install_entry_point(site, "sdmcl-test-plugin-broken", "sdmcl_test_plugin_broken", "import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "plugin 'sdmcl-test-plugin-broken' (sdmcl_test_plugin_broken, from sdmcl-test-plugin-broken) failed to import " \
           "(ModuleNotFoundError: No module named 'no_such_dependency_xyz'); fix or uninstall sdmcl-test-plugin-broken" in err

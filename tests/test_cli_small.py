"""Small command-line behaviours: version, the oracle in `list`, the system Fashion-MNIST in `data list`."""

import dataclasses

import pytest

from sdmcl import __version__
from sdmcl.cli import main
from sdmcl.data import sources


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"sdmcl {__version__}"


def test_list_names_the_oracle_and_the_loggers(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "oracle (upper bound): joint training, every class in one task: benchmark.joint=true" in out
    assert "tensorboard" in out and "sdmcl[wandb]" in out


def test_data_list_sees_a_system_copy(tmp_path, monkeypatch, capsys):
    system = tmp_path / "system"
    system.mkdir()
    for stem in sources.IDX_STEMS:
        (system / (stem + ".gz")).write_bytes(b"")
    info = sources.SOURCES["fashion-mnist"]
    monkeypatch.setitem(sources.SOURCES, "fashion-mnist", dataclasses.replace(info, system_dirs=(str(system),)))
    assert main(["data", "list", "--data-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert f"installed in {system} (used when the cache lacks it)" in out
    assert f"not downloaded (would go to {tmp_path / 'cache' / 'mnist'})" in out

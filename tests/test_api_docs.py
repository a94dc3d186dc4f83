"""docs/api.md: every Python block runs, in order, as one session in an empty directory."""

import re
from pathlib import Path

import pytest

from sdmcl import registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture
def clean_registries():
    """Registrations made by the examples are removed afterwards."""
    registry.load_all()  # built-ins registered first: they stay after the test
    tables = (registry.MODELS, registry.REGULARIZERS, registry.DATA_SOURCES, registry.LOGGERS)
    before = [dict(t) for t in tables]
    yield
    for table, old in zip(tables, before):
        table.clear()
        table.update(old)


def test_api_examples_run(tmp_path, monkeypatch, capsys, clean_registries):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 7
    monkeypatch.chdir(tmp_path)
    session: dict = {"__name__": "api_docs"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOC.name}[python block {i + 1}]", "exec"), session)
    out = capsys.readouterr().out
    # the examples did what they say: runs of every kind finished and were read back
    assert "| method | n |" in out and "deep_relu" in out and "l1_drift" in out and "noisy digits" in out
    names = {p.name.rsplit("-", 1)[0] for p in (tmp_path / "runs").iterdir()}
    assert {"api-demo", "api-demo-k5", "api-demo-k10", "deep", "sdm-l1", "noisy"} <= names
    groups = session["groups"]
    by_label = {g.label: len(g.runs) for g in groups}
    assert by_label["api-demo-k5"] == 2 and by_label["api-demo-k10"] == 2 and by_label["api-demo"] == 1
    assert session["regularized"]["regularizer"] == "l1_drift" and session["noisy"]["dataset"] == "noisy-digits"

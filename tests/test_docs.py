"""User docs stand alone: no pointers to documents users do not have, no dead local links."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USER_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "experiments").glob("*.yaml"))]


def test_no_pointers_to_internal_documents():
    bad = re.compile(r"SPEC|§|\bissues?\s*#?\d|#\d+\b")
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in USER_FILES
            for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert not hits, "\n".join(hits)


def test_local_links_resolve():
    dead = []
    for p in USER_FILES:
        if p.suffix != ".md":
            continue
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", p.read_text()):
            if "://" not in target and not (p.parent / target).exists():
                dead.append(f"{p.relative_to(ROOT)} → {target}")
    assert not dead, dead

"""Every document the code, the docs or the README refers to is shipped with the project."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"\b((?:docs|benchmarks)/[\w./-]+\.md)\b|\b([A-Z][A-Z_]+\.md)\b")


def _referring_files() -> list[Path]:
    return [*sorted((ROOT / "src").rglob("*.py")), *sorted((ROOT / "docs").glob("*.md")),
            ROOT / "README.md"]


def test_every_referenced_document_exists():
    missing = set()
    for path in _referring_files():
        for match in REFERENCE.finditer(path.read_text()):
            name = match.group(1) or match.group(2)
            if not (ROOT / name).exists() and not (path.parent / name).exists():
                missing.add(f"{path.relative_to(ROOT)} -> {name}")
    assert not missing, sorted(missing)


def test_the_paper_restated_is_shipped_and_linked():
    assert (ROOT / "docs" / "paper.md").exists()
    assert "docs/paper.md" in (ROOT / "README.md").read_text()

"""Every test path the documentation and the configs name (``tests/...``) exists, so a moved test or fixture
cannot leave a stale pointer in README.md, docs/, conf/, prefopt/, analysis/, scripts/, .ci/ or tests/ itself."""

from __future__ import annotations

import re

from tests.conftest import ROOT

PLACES = ["README.md", "docs", "conf", "prefopt", "analysis", "scripts", ".ci", "experiments", "pyproject.toml", "tests"]
SUFFIXES = {".md", ".py", ".yaml", ".yml", ".sh", ".toml", ".txt", ""}
# tests/<path> with an extension, or a folder ending in "/" (tests/plugins_example/).
PATH = re.compile(r"(?<![\w/.])tests/[\w./-]*[\w/]")


def _files():
    for place in PLACES:
        path = ROOT / place
        if path.is_file():
            yield path
        elif path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file() and f.suffix in SUFFIXES and "__pycache__" not in f.parts:
                    yield f


def test_named_test_paths_exist():
    missing = []
    for f in _files():
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for lineno, line in enumerate(text.splitlines(), start=1):
            for match in PATH.finditer(line):
                name = match.group(0).rstrip(".")
                if not (ROOT / name).exists():
                    missing.append(f"{f.relative_to(ROOT)}:{lineno}: {name}")
    assert not missing, "paths under tests/ that do not exist (moved?):\n  " + "\n  ".join(missing)

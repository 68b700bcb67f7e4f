"""Two rules of the design, checked on the source: the code asks a loss or a reference what it can do and never
tests its name. Only the registries themselves may compare names (``prefopt/losses/``, ``prefopt/reference.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

from prefopt import losses
from prefopt.reference import _KINDS
from tests.conftest import ROOT

PREFOPT = ROOT / "prefopt"


def name_tests(path: Path, names: set[str], context: str) -> list[str]:
    """``file:line`` of every comparison whose source mentions ``context`` and compares with one of ``names``
    (``==``, ``!=``, ``in``, ``not in`` against a string or a tuple/list/set of strings)."""
    source = path.read_text(encoding="utf-8")
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        text = ast.get_source_segment(source, node) or ""
        constants = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        if context in text and constants & names:
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            found.append(f"{where}:{node.lineno}: {text}")
    return found


def test_no_reference_kind_is_tested_outside_the_reference_module():
    kinds = set(_KINDS)
    assert {"frozen", "precomputed", "sync", "adapter_off", "checkpoint", "none"} <= kinds
    offenders = [hit for path in sorted(PREFOPT.rglob("*.py")) if path != PREFOPT / "reference.py"
                 for hit in name_tests(path, kinds, "reference")]
    assert offenders == [], "ask the reference class what it can do instead:\n" + "\n".join(offenders)


def test_no_loss_name_is_tested_outside_the_losses_package():
    names = set(losses.names()) | set(losses.aliases())
    offenders = [hit for path in sorted(PREFOPT.rglob("*.py")) if PREFOPT / "losses" not in path.parents
                 for hit in name_tests(path, names, "loss")]
    assert offenders == [], "ask the LossSpec what it needs instead:\n" + "\n".join(offenders)


def test_the_rule_checker_finds_a_planted_name_test(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('def f(cfg):\n    return cfg.reference.kind == "sync" or cfg.loss_name in ("dpo", "x")\n')
    assert name_tests(planted, set(_KINDS), "reference") and name_tests(planted, {"dpo"}, "")
    assert not name_tests(planted, {"frozen"}, "reference")

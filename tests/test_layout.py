"""How the test suite is laid out: helpers shared between test modules live in
support modules (``tests/support.py``, ``tests/*kit.py``,
``tests/adversarial/outside.py``, ``tests/adversarial/probes.py``), never in
another test module, so that running or editing one test file never runs or
breaks another's setup."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def importedTestModules(source: str) -> list[str]:
    """The modules imported by ``source`` whose last dotted part is a ``test_*`` module."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            # ``from . import test_x`` and ``from tests import test_x`` name the module last
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [n for n in names if n.rsplit(".", 1)[-1].startswith("test_")]
    return found


def test_the_check_sees_every_form_of_import() -> None:
    """Plain, dotted, relative and from-package imports of a test module are all found;
    support modules are not."""
    source = (
        "import tests.test_a\n"
        "from tests.test_b import Harness\n"
        "from .test_c import x\n"
        "from tests import test_d\n"
        "from tests.chatkit import Harness\n"
        "import pytest\n"
    )
    assert importedTestModules(source) == [
        "tests.test_a",
        "tests.test_b",
        "test_c",
        "tests.test_d",
    ]


def test_no_test_module_imports_another() -> None:
    """Every ``tests/**/test_*.py`` imports only support modules, never a test module."""
    offenders = {
        str(path.relative_to(TESTS)): imported
        for path in sorted(TESTS.rglob("test_*.py"))
        if (imported := importedTestModules(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}

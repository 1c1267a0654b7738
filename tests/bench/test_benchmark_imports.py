"""Every name a benchmark script imports from forgeline exists and is public.

The scripts import lazily inside functions, so a moved or renamed module only fails when that
case runs, minutes into a benchmark (``moe_scaling.py`` broke this way after the layout change).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def forgeline_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every ``from forgeline... import name``, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("forgeline"):
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


def resolves(module: str, name: str) -> bool:
    try:
        owner = importlib.import_module(module)
    except ImportError:
        return False
    if hasattr(owner, name):
        return True
    try:
        importlib.import_module(f"{module}.{name}")
    except ImportError:
        return False
    return True


def test_there_are_scripts_to_check():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_imports_resolve_and_are_public(script):
    broken = [f"{script.name}:{line} {module}.{name}" for line, module, name in forgeline_imports(script)
              if not resolves(module, name)]
    private = [f"{script.name}:{line} {module}.{name}" for line, module, name in forgeline_imports(script)
               if name.startswith("_")]
    assert not broken, f"imports that do not resolve: {broken}"
    assert not private, f"private imports: {private}"

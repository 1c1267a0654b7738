"""The layout holds: stages import only to their left, no import cycles, no private cross-module imports.

Read from the source with ``ast`` (every import, lazy ones inside functions included), so the test
sees what a newcomer reading the code sees, whichever modules happen to be imported at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Top-level folder -> the package it is installed as (pyproject.toml's package-dir).
FOLDERS = {"define": "forgeline.define", "train": "forgeline.train", "export": "forgeline.export",
           "compile": "forgeline.compile", "runtime": "forgeline.runtime", "forgeline": "forgeline"}
# What each stage may import from the others (runtime's format and errors are everyone's).
ALLOWED = {
    "forgeline.define": {"forgeline.runtime"},
    "forgeline.train": {"forgeline.define", "forgeline.runtime"},
    "forgeline.export": {"forgeline.define", "forgeline.runtime"},
    "forgeline.compile": {"forgeline.runtime"},
    "forgeline.runtime": set(),
}
FORBIDDEN_THIRD_PARTY = {"forgeline.compile": {"torch"}, "forgeline.runtime": {"torch", "onnx", "tvm.relax"}}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) for every import statement, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [alias.name for alias in node.names]))
    return out


def _stage(module: str) -> str | None:
    for stage in ALLOWED:
        if module == stage or module.startswith(stage + "."):
            return stage
    return None


def test_stages_import_only_to_their_left_and_no_forbidden_libraries():
    wrong = []
    for name, path in _modules().items():
        stage = _stage(name)
        if stage is None:
            continue
        for target, _ in _imports(name, path):
            other = _stage(target)
            if other and other != stage and other not in ALLOWED[stage]:
                wrong.append(f"{name} imports {target}")
            if target.startswith("forgeline.") and other is None and target != "forgeline":
                wrong.append(f"{name} imports the front door {target}")
            for lib in FORBIDDEN_THIRD_PARTY.get(stage, ()):
                if target == lib or target.startswith(lib + "."):
                    wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_no_import_cycles_and_no_private_names_across_modules():
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    private = []
    for name, path in modules.items():
        for target, names in _imports(name, path):
            resolved = [f"{target}.{n}" if f"{target}.{n}" in modules else target for n in names or [""]]
            graph[name] |= {m for m in resolved if m in modules and m != name}
            if names and target in modules and target != name:
                graph[name].add(target)  # `from PKG import x` runs PKG's __init__ (it may import this module)
            private += [f"{name} imports {target}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__") and target in modules and target != name]
    assert private == []
    cycles = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_python_m_cli_and_the_entry_point_list_the_same_commands():
    def commands(argv: list[str]) -> list[str]:
        out = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=120, cwd=REPO.parent)
        assert out.returncode == 0, out.stderr[-2000:]
        block = out.stdout.split("positional arguments:")[1].split("options:")[0]
        return [line.split()[0] for line in block.splitlines()[2:] if line.startswith("    ") and line.split()
                and not line.startswith("      ")]

    entry = commands([str(Path(sys.executable).with_name("forgeline"))])
    module = commands([sys.executable, "-m", "forgeline.cli"])
    assert entry == module
    assert {"models", "export", "compile", "build", "run", "check", "tune", "bench", "generate",
            "translate", "fill-mask", "next-sentence", "train"} <= set(entry)

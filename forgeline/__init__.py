"""forgeline: PyTorch Transformers → ONNX → TVM Relax artifacts, checked against eager PyTorch.

The public API is imported lazily: ``import forgeline.runtime`` runs this file first, and an
application that embeds only the runtime must not pay for torch, onnx or the TVM compiler.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

# In a source checkout the stage folders (define/, export/, compile/, runtime/) sit beside this
# folder, and pyproject.toml maps them onto forgeline.<stage> when installing. A process whose
# working directory is the checkout (`python -c`, TVM's tuning workers) imports this folder
# instead of the installed package; searching the checkout root for subpackages keeps
# `forgeline.define` & co. importable there too. An installed copy has no pyproject.toml beside it.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "runtime" / "format.py").is_file():
    __path__.append(str(_checkout))

__version__ = "0.1.0"

_API = {
    "build": "forgeline.api",
    "export_model": "forgeline.export",
    "ExportOptions": "forgeline.export",
    "compile_artifact": "forgeline.compile",
    "CompileOptions": "forgeline.compile",
    "check_artifact": "forgeline.check",
    "load": "forgeline.runtime",
    "ForgelineError": "forgeline.runtime.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'forgeline' has no attribute {name!r}")

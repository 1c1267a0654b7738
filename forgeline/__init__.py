"""forgeline: PyTorch Transformers → ONNX → TVM Relax artifacts, checked against eager PyTorch.

The public API is imported lazily: ``import forgeline.runtime`` runs this file first, and an
application that embeds only the runtime must not pay for torch, onnx or the TVM compiler.
"""

from __future__ import annotations

import importlib
from typing import Any

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

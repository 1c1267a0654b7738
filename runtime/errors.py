"""The one exception root of forgeline, and its small subclasses.

Every error a user can cause is a ``ForgelineError`` whose message is a sentence that says what
was wrong and what to do. Only the CLI catches them; it prints ``error: <sentence>`` and exits
non-zero. This module is pure Python so that every stage, the light runtime included, can raise
these without importing anything heavy.
"""

from __future__ import annotations


class ForgelineError(Exception):
    """Root of every error forgeline raises on purpose."""


class ConfigError(ForgelineError, ValueError):
    """A model or stage configuration whose values do not fit together."""


class UnknownModelError(ForgelineError, KeyError):
    """A family or preset name that forgeline does not know."""

    def __str__(self) -> str:  # KeyError quotes its message; a sentence reads better bare.
        return str(self.args[0]) if self.args else ""


class InputError(ForgelineError, ValueError):
    """Arrays handed to a model that do not match its declared inputs."""


class ArtifactError(ForgelineError):
    """A bundle or artifact that is missing, corrupt, truncated or edited."""


class TargetMismatchError(ForgelineError):
    """An artifact built for a target that this host cannot run."""


class ExportError(ForgelineError):
    """torch → ONNX export, or its checks, failed."""


class CompileError(ForgelineError):
    """ONNX → TVM import or build failed."""


class ParityError(ForgelineError):
    """A backend's outputs missed eager PyTorch beyond tolerance, or routed tokens differently."""


class MissingDependencyError(ForgelineError, ImportError):
    """An optional dependency that this path needs is not installed."""


def error_summary(exc: BaseException, *, last: bool = False, limit: int = 500) -> str:
    """One line of another library's exception, to quote inside a sentence of ours.

    Python errors put the useful line first; TVM's C++ errors put a backtrace first and the
    message last, so ``last=True`` takes the final non-empty line.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[-1] if last else lines[0])[:limit].rstrip(".")


class StorageError(ForgelineError):
    """A write (or read) that the filesystem refused: disk full, read-only, no permission (storage.py)."""

"""Load TVM's tensor intrinsics (``tvm.s_tir.tensor_intrin``) quickly, and only those a build needs.

The intrinsic modules define ~500 TVMScript functions at import. TVM's ``T.prim_func`` decorator
calls ``inspect.stack()`` for each, and ``inspect.stack`` reads the source context of every frame
on the stack through ``inspect.getmodule``, which scans all of ``sys.modules`` for each frame whose
file is not a module's (the ``<frozen importlib…>`` frames of the import itself). In a process
that has torch, onnx and transformers loaded (a ``forgeline build``, a test session) the import
took 70 s, 168 s under pytest, against ~5 s with the stack read here (docs/tvm-notes.md).

``load_tensor_intrinsics`` therefore

- registers only the named modules (``cuda`` for a CUDA build, ``x86`` for x86 tuning) in a
  partial package, so a later ``import tvm.s_tir.tensor_intrin`` (MetaSchedule's TuneContext has
  one) finds it in ``sys.modules`` and loads nothing more;
- gives TVM's TIR parser, for the duration of those imports only, an ``inspect`` whose ``stack``
  reads each frame's line from ``linecache`` directly. TVM uses the frames, their locals and the
  decorator line (``code_context``), which this stack gives exactly as ``inspect.stack`` does.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import linecache
import logging
import sys
import types
from collections.abc import Iterable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

INTRINSICS_PACKAGE = "tvm.s_tir.tensor_intrin"
_PARSER_ENTRY = "tvm.tirx.script.parser.entry"  # where T.prim_func calls inspect.stack()


def frame_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack(context)`` for the caller, without ``inspect.getmodule``.

    Each entry has the frame, file, line, function and (for ``context`` > 0) the source line of
    the frame, read from ``linecache`` with the frame's globals so that zipped or frozen modules
    with a loader still give their source.
    """
    frame = sys._getframe(1)
    stack = []
    while frame is not None:
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno, frame.f_globals) if context > 0 else ""
        code_context, index = ([line], 0) if line else (None, None)
        stack.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, code_context, index))
        frame = frame.f_back
    return stack


class _InspectWithFrameStack(types.ModuleType):
    """``inspect`` as TVM's parser sees it while intrinsics load: the same, but ``stack``."""

    def __init__(self) -> None:
        super().__init__("inspect")
        self.stack = frame_stack

    def __getattr__(self, name: str):
        return getattr(inspect, name)


@contextlib.contextmanager
def _parser_reads_frames_directly() -> Iterator[None]:
    entry = importlib.import_module(_PARSER_ENTRY)
    original = entry.inspect
    entry.inspect = _InspectWithFrameStack()
    try:
        yield
    finally:
        entry.inspect = original


def _partial_package() -> types.ModuleType:
    """The intrinsics package in ``sys.modules`` without its ``__init__`` (which loads them all)."""
    if INTRINSICS_PACKAGE in sys.modules:
        return sys.modules[INTRINSICS_PACKAGE]
    import tvm.s_tir

    package = types.ModuleType(INTRINSICS_PACKAGE)
    package.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
    package.__package__ = INTRINSICS_PACKAGE
    sys.modules[INTRINSICS_PACKAGE] = package
    tvm.s_tir.tensor_intrin = package
    return package


def load_tensor_intrinsics(modules: Iterable[str]) -> bool:
    """Register the intrinsics of ``modules`` (e.g. ``("cuda",)``) and no others.

    True when this call created the partial package, False when the package (whole or partial)
    was already loaded; the named modules are registered either way.
    """
    modules = tuple(modules)
    created = INTRINSICS_PACKAGE not in sys.modules
    _partial_package()
    with _parser_reads_frames_directly():
        for name in modules:
            importlib.import_module(f"{INTRINSICS_PACKAGE}.{name}")
    logger.debug("Tensor intrinsics loaded: %s.", ", ".join(modules) or "none")
    return created


__all__ = ["INTRINSICS_PACKAGE", "frame_stack", "load_tensor_intrinsics"]

"""torch → ONNX with the dynamo exporter, dynamic symbolic dims, and the ONNX checker.

The dynamo exporter is required, not a preference: the legacy TorchScript exporter writes
``index_add`` as ScatterElements without reduction, which is silently wrong when two experts pick
the same token (docs/tvm-notes.md).
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from pathlib import Path

import torch

from forgeline.define.moe import trace_shift
from forgeline.runtime.errors import ExportError, error_summary
from forgeline.runtime.format import ONNX_FILE
from forgeline.runtime.inputs import symbolic_dims
from forgeline.runtime.storage import errno_in_text, is_storage_errno, storage_error

log = logging.getLogger(__name__)

# Example sizes for tracing. torch.export specialises dims of size 0 and 1, so every symbolic dim
# is traced at a size of at least 2, then left free in the graph.
TRACE_SIZES = {"batch": 2}
TRACE_SEQ = 8


def trace_dims(dim_names: list[str], dim_limits: dict[str, int | None], shift: int = 0) -> dict[str, int]:
    """A size for every symbolic dim: small, at least 2, within its limit, distinct per dim.

    ``shift`` enlarges them all alike (MoE slot lists must not trace at one slot: moe.trace_shift).
    """
    dims = {}
    for offset, name in enumerate(dim_names):
        size = TRACE_SIZES.get(name, TRACE_SEQ + offset) + shift
        limit = dim_limits.get(name)
        dims[name] = min(size, limit) if limit else size
    return dims


def export_onnx(model: torch.nn.Module, out_dir: Path, dim_limits: dict[str, int | None]) -> Path:
    """Export ``model`` (a forgeline.define model) to ``out_dir/model.onnx`` with dynamic dims."""
    specs = model.input_specs()
    dim_names = symbolic_dims(specs)
    torch_dims = {n: torch.export.Dim(n, min=1, max=dim_limits.get(n) or 1 << 20) for n in dim_names}
    dynamic_shapes = tuple(
        {axis: torch_dims[d] for axis, d in enumerate(s.dims) if isinstance(d, str)} for s in specs
    )
    sizes = trace_dims(dim_names, dim_limits, trace_shift(model))
    example = model.example_inputs(sizes, torch.Generator().manual_seed(0))
    path = Path(out_dir) / ONNX_FILE
    log.info("exporting %s to ONNX (dynamic dims: %s)", type(model).__name__, ", ".join(dim_names))
    export_graph(model, tuple(example), {}, path, input_names=[s.name for s in specs],
                 output_names=model.output_names(), dynamic_shapes=dynamic_shapes)
    return path


def export_graph(module: torch.nn.Module, args: tuple, kwargs: dict, path: Path, *, input_names: list[str],
                 output_names: list[str], dynamic_shapes) -> None:
    """torch.onnx.export (dynamo) of any module to ``path`` with external data, then the ONNX checker."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter warns about every symbolic guard it adds
            torch.onnx.export(
                module,
                args,
                str(path),
                kwargs=kwargs or None,
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                external_data=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many internal types; the user needs one sentence
        code = getattr(exc, "errno", None) or errno_in_text(str(exc))
        if is_storage_errno(code):  # the disk filled up (or is read-only) under the exporter
            raise storage_error(exc, f"Writing the ONNX graph to {path.parent}", code) from exc
        raise ExportError(f"torch.onnx.export failed for {type(module).__name__}: {_root_cause(exc)}") from exc
    log.info("exported in %.1f s", time.perf_counter() - start)
    forget_matched_graphs()
    check_onnx(path)


def forget_matched_graphs() -> None:
    """Drop the last exported graph that onnxscript's rewrite rules hold on to.

    The exporter's rewrite rules are module globals, and their pattern matchers keep the graph of
    their last match (``_graph``, ``_match``, ``_current_node``). That graph holds the model's
    parameters, so without this every export would keep a full copy of the weights alive for the
    life of the process (0.5 GB for gpt base, through the whole compile). Only matcher state set
    anew at the start of every match is reset.
    """
    import gc

    try:
        from onnxscript.rewriter._basics import MatchResult
        from onnxscript.rewriter._matcher import SimplePatternMatcher
    except ImportError:  # another onnxscript: nothing known to reset
        return
    for obj in gc.get_objects():
        if issubclass(type(obj), SimplePatternMatcher):  # type(): no attribute lookups that warn
            obj._graph = obj._current_node = obj._tracer = None
            obj._match = MatchResult()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colour codes


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost cause: the exporter wraps the real reason (a data-dependent
    branch, an unsupported op) in a generic "failed at step 1/3" with terminal colours."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {_ANSI.sub('', error_summary(exc))}"


def check_onnx(path: Path) -> None:
    """Run the ONNX checker and strict shape inference on the file (external data included)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported graph fails the ONNX checker: {error_summary(exc)}") from exc
    log.info("ONNX checker and shape inference passed")

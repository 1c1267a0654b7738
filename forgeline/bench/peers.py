"""Benchmark runners beside forgeline's own: its reduced-precision builds, OpenVINO and ORT int8.

OpenVINO and ONNX Runtime's int8 are peers for benchmarks only, never runtime dependencies
(``pip install forgeline[peers]``). OpenVINO's CPU plugin picks bf16 by itself on CPUs with native
bf16 matmuls (AVX512-BF16 or AMX); ``openvino`` runs its default, ``openvino-f32`` asks for fp32
with ``INFERENCE_PRECISION_HINT=f32``. The precision each one chose is logged. ``ort-int8`` runs
model.onnx after ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations per call).
``tvm-bf16`` / ``tvm-int8`` run the artifact's build of that precision this host can run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forgeline.runtime.errors import ConfigError, MissingDependencyError
from forgeline.runtime.format import ONNX_FILE, Manifest

log = logging.getLogger(__name__)


def precision_build(manifest: Manifest, precision: str = "bf16"):
    """The artifact's CPU build of ``precision`` this host can run; ConfigError with the reason
    otherwise."""
    from forgeline.runtime.host import can_run, describe_host

    # Not the emulated ones (CompileOptions.emulate_amx): they are for checking, not timing; and a
    # build kept in bytecode for profiling only where it is the only one (compile/vm_exec.py).
    builds = sorted((b for b in manifest.builds.values()
                     if b.precision == precision and b.kind == "llvm" and not b.tag.endswith("emu")),
                    key=lambda b: b.vm == "bytecode")
    if not builds:
        raise ConfigError(f"the artifact has no {precision} build (emulated ones are not timed); "
                          f"compile one with --precision {precision}.")
    host = describe_host()
    for build in builds:
        ok, why = can_run(build.requires, host)
        if ok:
            return build
    raise ConfigError(f"this host cannot run the {precision} build {builds[0].tag}: {why}")


def bf16_build(manifest: Manifest):
    return precision_build(manifest, "bf16")


def run_tvm_precision(precision: str):
    def run(root: Path, manifest: Manifest, inputs, options) -> Callable[[], Any]:
        from forgeline.runtime.amx import needs_amx, request_amx_permission
        from forgeline.runtime.backends.tvm import library_executor

        build = precision_build(manifest, precision)
        if needs_amx(build.requires):
            request_amx_permission()
        executor = library_executor(root, build, device="cpu")
        ordered = [inputs[name] for name in manifest.input_names()]
        return lambda: executor.run(ordered)

    return run


run_tvm_bf16 = run_tvm_precision("bf16")


def _run_ort_int8(root: Path, manifest: Manifest, inputs, options) -> Callable[[], Any]:
    import atexit
    import shutil
    import tempfile

    from .peer_runners import PeerUnavailable, ort_int8_runner

    work = Path(tempfile.mkdtemp(prefix="forgeline-ort-int8-"))  # lives as long as the process
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    try:
        return ort_int8_runner(root, manifest, inputs, work)
    except PeerUnavailable as exc:
        raise MissingDependencyError(f"the ort-int8 backend needs onnxruntime's quantization tools: {exc}.") from exc


def _openvino_runner(precision_hint: str | None):
    def run(root: Path, manifest: Manifest, inputs, options) -> Callable[[], Any]:
        try:
            import openvino as ov
        except ImportError as exc:
            raise MissingDependencyError("the openvino backends need OpenVINO; install it with "
                                         "`pip install forgeline[peers]`.") from exc
        config = {"INFERENCE_PRECISION_HINT": precision_hint} if precision_hint else {}
        compiled = ov.Core().compile_model(str(root / ONNX_FILE), "CPU", config)
        log.info("OpenVINO %s runs at inference precision %s", ov.__version__,
                 compiled.get_property("INFERENCE_PRECISION_HINT"))
        request = compiled.create_infer_request()
        feeds = {name: inputs[name] for name in manifest.input_names()}
        return lambda: request.infer(feeds)

    return run


def openvino_precision(root: Path, precision_hint: str | None = None) -> str:
    """The inference precision OpenVINO's CPU plugin picks for the artifact's model here."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": precision_hint} if precision_hint else {}
    compiled = ov.Core().compile_model(str(Path(root) / ONNX_FILE), "CPU", config)
    return str(compiled.get_property("INFERENCE_PRECISION_HINT"))


PEER_RUNNERS = {"tvm-bf16": run_tvm_bf16, "tvm-int8": run_tvm_precision("int8"), "ort-int8": _run_ort_int8,
                "openvino": _openvino_runner(None), "openvino-f32": _openvino_runner("f32")}

__all__ = ["PEER_RUNNERS", "bf16_build", "openvino_precision", "precision_build", "run_tvm_bf16",
           "run_tvm_precision"]

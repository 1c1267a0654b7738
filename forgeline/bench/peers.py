"""Benchmark runners beside forgeline's own: its bf16 build, and OpenVINO as a peer.

OpenVINO is a peer for benchmarks only, never a runtime dependency (``pip install
forgeline[peers]``). Its CPU plugin picks bf16 by itself on CPUs with native bf16 matmuls (AMX
Xeons); ``openvino`` runs its default, ``openvino-f32`` asks for fp32 with
``INFERENCE_PRECISION_HINT=f32``. The precision each one chose is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forgeline.runtime.errors import ConfigError, MissingDependencyError
from forgeline.runtime.format import ONNX_FILE, Manifest

log = logging.getLogger(__name__)


def bf16_build(manifest: Manifest):
    """The artifact's bf16 CPU build this host can run; ConfigError with the reason otherwise."""
    from forgeline.runtime.host import can_run, describe_host

    # Not the emulated ones (CompileOptions.emulate_amx): they are for checking, not timing.
    builds = [b for b in manifest.builds.values()
              if b.precision == "bf16" and b.kind == "llvm" and not b.tag.endswith("emu")]
    if not builds:
        raise ConfigError("the artifact has no bf16 build (emulated ones are not timed); compile one "
                          "with --precision bf16 on a host with AVX512-BF16 or AMX.")
    host = describe_host()
    for build in builds:
        ok, why = can_run(build.requires, host)
        if ok:
            return build
    raise ConfigError(f"this host cannot run the bf16 build {builds[0].tag}: {why}")


def run_tvm_bf16(root: Path, manifest: Manifest, inputs, options) -> Callable[[], Any]:
    from forgeline.runtime.amx import needs_amx, request_amx_permission
    from forgeline.runtime.backends.tvm import TvmExecutor

    build = bf16_build(manifest)
    if needs_amx(build.requires):
        request_amx_permission()
    executor = TvmExecutor(root / build.lib, device="cpu")
    ordered = [inputs[name] for name in manifest.input_names()]
    return lambda: executor.run(ordered)


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


PEER_RUNNERS = {"tvm-bf16": run_tvm_bf16, "openvino": _openvino_runner(None),
                "openvino-f32": _openvino_runner("f32")}

__all__ = ["PEER_RUNNERS", "bf16_build", "openvino_precision", "run_tvm_bf16"]

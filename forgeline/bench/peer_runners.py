"""One loader per peer runtime: each returns a callable that runs the artifact's own model.onnx
(or forgeline build) once and returns its outputs in the manifest's output order. Called with no
argument it runs the inputs it was loaded with (the timed runs); given a feed of the same shapes
it runs that instead (the held-out inputs that accuracy is measured on).

A loader raises ``PeerUnavailable`` with one sentence when its runtime is not installed or the
artifact has nothing for it to run; ``benchmarks/peers.py`` reports that instead of crashing.
Peers are an optional extra (``pip install ".[peers]"``), never a dependency of forgeline.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from forgeline.runtime.errors import ForgelineError
from forgeline.runtime.format import ONNX_FILE, Manifest

log = logging.getLogger(__name__)

Runner = Callable[..., list[np.ndarray]]  # (feed: dict[str, ndarray] | None = None) -> outputs


class PeerUnavailable(ForgelineError):
    """A peer runtime that cannot run here: not installed, or nothing in the artifact for it."""


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        raise PeerUnavailable(f"not installed (pip install {package})")


def ort_runner(root: Path, manifest: Manifest, inputs: dict[str, np.ndarray], work: Path) -> Runner:
    """ONNX Runtime's CPU provider with its defaults, the runtime most users already have."""
    _require("onnxruntime", "onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # unused-initializer warnings on every load
    session = ort.InferenceSession(str(root / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    return lambda feed=None: [np.asarray(o) for o in session.run(None, feed or inputs)]


def quantized_onnx(root: Path, work: Path) -> Path:
    """model.onnx through ONNX Runtime's ``quantize_dynamic``: int8 weights (QInt8, per tensor,
    its defaults), activations quantized per call, what ORT users get from one function call."""
    _require("onnxruntime.quantization", "onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = work / "model.int8.onnx"
    if not out.is_file():
        quantize_dynamic(str(_constant_folded(root, work)), str(out), weight_type=QuantType.QInt8)
    return out


def _constant_folded(root: Path, work: Path) -> Path:
    """model.onnx with each ``Transpose`` of a weight replaced by the transposed initializer, and
    without ``value_info`` entries for initializers.

    The graphs read Linear weights from the checkpoint as ``Transpose(W)`` (export/shared_data.py),
    and ``quantize_dynamic`` quantizes only a MatMul whose weight is an initializer; this is the
    constant folding ORT's quantization pre-processing does, limited to what it needs. The
    exporter also records each initializer's shape in ``value_info`` (legal, and redundant with the
    initializer's dims); ``quantize_dynamic`` rewrites ``Gemm(x, W, transB=1)`` (BERT's pooler and
    NSP head) to ``MatMul(x, W^T)`` by transposing W in place and leaves that entry stale, so its
    next shape inference failed ("Inferred shape and existing shape differ").
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(root / ONNX_FILE), load_external_data=True)
    weights = {init.name: init for init in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Transpose" and node.input[0] in weights:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            value = numpy_helper.to_array(weights[node.input[0]]).transpose(perm)
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), node.output[0]))
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    initializers = {init.name for init in model.graph.initializer}
    shapes = [info for info in model.graph.value_info if info.name not in initializers]
    del model.graph.value_info[:]
    model.graph.value_info.extend(shapes)
    out = work / "model.folded.onnx"
    onnx.save(model, str(out), save_as_external_data=True, location="model.folded.onnx.data")
    return out


def ort_int8_runner(root: Path, manifest: Manifest, inputs: dict[str, np.ndarray], work: Path) -> Runner:
    """ONNX Runtime's CPU provider on the ``quantize_dynamic`` int8 copy of model.onnx."""
    import onnxruntime as ort

    path = quantized_onnx(root, work)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    order = [names.index(n) for n in manifest.output_names()]  # the manifest's output order

    def run(feed=None) -> list[np.ndarray]:
        got = session.run(None, feed or inputs)
        return [np.asarray(got[i]) for i in order]

    return run


def openvino_runner(precision: str | None) -> Callable[..., Runner]:
    """OpenVINO's CPU plugin; ``precision`` "f32" asks for fp32, None keeps its default (bf16 on
    CPUs with native bf16). The model is reshaped to the benchmark's static shape first."""

    def load(root: Path, manifest: Manifest, inputs: dict[str, np.ndarray], work: Path) -> Runner:
        _require("openvino", "openvino")
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(root / ONNX_FILE))
        model.reshape({name: list(array.shape) for name, array in inputs.items()})
        config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        outputs = compiled.outputs
        log.info("openvino %s: inference precision %s", precision or "default",
                 compiled.get_property("INFERENCE_PRECISION_HINT"))

        def run(feed=None) -> list[np.ndarray]:
            result = request.infer(feed or inputs)
            return [np.array(result[o]) for o in outputs]

        return run

    return load


def iree_runner(root: Path, manifest: Manifest, inputs: dict[str, np.ndarray], work: Path) -> Runner:
    """IREE llvm-cpu for this host's CPU, on a static-shape copy of model.onnx (IREE wants static
    shapes to be fair, and compiles ahead of time)."""
    _require("iree.compiler", "iree-base-compiler")
    _require("iree.runtime", "iree-base-runtime")
    import iree.compiler as ireec
    import iree.runtime as ireert

    static = _static_onnx(root / ONNX_FILE, inputs, work / "iree-static.onnx")
    mlir = work / "iree.mlir"
    subprocess.run([sys.executable, "-m", "iree.compiler.tools.import_onnx", str(static), "-o", str(mlir)],
                   check=True, capture_output=True)
    vmfb = ireec.compile_file(str(mlir), target_backends=["llvm-cpu"],
                              extra_args=["--iree-llvmcpu-target-cpu=host"])
    config = ireert.Config("local-task")
    context = ireert.SystemContext(config=config)
    context.add_vm_module(ireert.VmModule.copy_buffer(context.instance, vmfb))
    main = context.modules.module["main_graph"]
    ordered = [inputs[name] for name in manifest.input_names()]

    def run(feed=None) -> list[np.ndarray]:
        result = main(*(ordered if feed is None else [feed[name] for name in manifest.input_names()]))
        results = result if isinstance(result, (list, tuple)) else [result]
        return [np.asarray(r.to_host()) for r in results]

    return run


def _static_onnx(path: Path, inputs: dict[str, np.ndarray], out: Path) -> Path:
    """model.onnx with every input dim fixed to the benchmark's shape and shapes re-inferred."""
    import onnx

    model = onnx.load(str(path))  # pulls in model.onnx.data
    for graph_input in model.graph.input:
        if graph_input.name in inputs:
            dims = graph_input.type.tensor_type.shape.dim
            for dim, size in zip(dims, inputs[graph_input.name].shape):
                dim.Clear()
                dim.dim_value = int(size)
    del model.graph.value_info[:]  # symbolic intermediate shapes would keep IREE dynamic
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    onnx.save(model, str(out))
    return out


def tvm_runner(which: str) -> Callable[..., Runner]:
    """forgeline's TVM builds for this host: "dynamic" (untuned), "bucket" (the tuned bucket of
    exactly this shape), or a build tag (a reduced-precision build the manifest lists)."""

    def load(root: Path, manifest: Manifest, inputs: dict[str, np.ndarray], work: Path) -> Runner:
        from forgeline.runtime.amx import needs_amx, request_amx_permission
        from forgeline.runtime.backends.tvm import library_executor
        from forgeline.runtime.format import symbolic_sizes
        from forgeline.runtime.model import select_build

        build = manifest.builds.get(which) or _fp32_cpu_build(manifest) or select_build(manifest, "cpu")
        if needs_amx(build.requires):
            request_amx_permission()  # before the first tile instruction, or SIGILL
        lib = build.lib
        if which == "bucket":
            dims = symbolic_sizes(manifest.inputs, [inputs[n] for n in manifest.input_names()])
            bucket = next((b for b in (build.buckets or {}).values() if b["dims"] == dims), None)
            if bucket is None:
                shape = "x".join(str(v) for v in dims.values())
                raise PeerUnavailable(f"no tuned build for {shape} in {build.tag} (pass --tune-minutes)")
            lib = bucket["lib"]
        executor = library_executor(root, build, lib, device="cpu")
        names = manifest.input_names()
        ordered = [inputs[name] for name in names]
        return lambda feed=None: executor.run(ordered if feed is None else [feed[name] for name in names])

    return load



def _fp32_cpu_build(manifest: Manifest):
    """The first fp32 CPU build (builds without a ``precision`` field are fp32), or None."""
    return next((b for b in manifest.builds.values() if b.kind == "llvm" and not b.codegen_only
                 and (getattr(b, "precision", None) or "fp32") in ("fp32", "float32")), None)

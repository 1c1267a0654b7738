"""The int8 GEMM beside the fp32 one, per dense-layer shape, in one interleaved run.

For each (M, K, N) it builds the fp32 GEMM schedule (compile/cpu/matmul.py, through the CPU
pipeline, weights packed at build time) and the int8 kernels this host can run (AMX's
``tdpbssd``, VNNI's ``vpdpbusd`` and AVX2's ``vpmaddubsw``), each with its bias epilogue, and times them round-robin
(median of ``--rounds`` rounds of ``--reps`` calls each) on ``TVM_NUM_THREADS`` threads. The int8
times include the per-call activation quantization. Default shapes: gpt-small at 1x128 and 8x128
(QKV, FFN in and out, LM head). The machine may be shared: read the ratios.

    python benchmarks/int8_gemm.py [--shapes 128x256x768 1024x256x1024] [--rounds 15 --reps 20]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

DEFAULT_SHAPES = ("128x256x768", "128x256x1024", "128x1024x256", "128x256x8000",
                  "1024x256x1024", "1024x1024x256")


def _fp32_gemm(weight, bias, target):
    import tvm
    from tvm import relax

    from forgeline.compile.cpu.pipeline import cpu_pipeline

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([tvm.tirx.Var("m", "int64"), weight.shape[0]], "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit_output(relax.op.add(relax.op.matmul(x, relax.const(weight)), relax.const(bias)))
        builder.emit_func_output(y)
    vm = relax.VirtualMachine(tvm.compile(builder.get(), target=target, relax_pipeline=cpu_pipeline(target)),
                              tvm.cpu())
    return lambda a: vm["main"](a)


def _int8_gemm(weight, bias, isa, target):
    import tvm

    from forgeline.compile.cpu.int8 import int8_dense, pack_weight

    k, n = weight.shape
    lib = tvm.compile(tvm.IRModule({"main": int8_dense(k, n, isa).with_attr("global_symbol", "main")}),
                      target=target)
    operands = [tvm.runtime.tensor(v) for v in (*pack_weight(weight, isa), bias)]
    outs: dict = {}

    def run(a):
        out = outs.setdefault(a.shape[0], tvm.runtime.tensor(np.empty((a.shape[0], n), np.float32)))
        lib["main"](a, *operands, out)

    return run


def _amx_int8_gemm(weight, bias, target):
    import tvm

    from forgeline.compile.cpu.amx_int8 import amx_int8_dense, pack_weight
    from forgeline.runtime.amx import request_amx_permission

    request_amx_permission()
    k, n = weight.shape
    lib = tvm.compile(tvm.IRModule({"main": amx_int8_dense(k, n).with_attr("global_symbol", "main")}),
                      target=target)
    operands = [tvm.runtime.tensor(v) for v in (*pack_weight(weight), bias)]
    outs: dict = {}

    def run(a):
        out = outs.setdefault(a.shape[0], tvm.runtime.tensor(np.empty((a.shape[0], n), np.float32)))
        lib["main"](a, *operands, out)

    return run


def bench_shape(m: int, k: int, n: int, rounds: int, reps: int) -> dict[str, float]:
    """Median ms per call of each kernel on one shape."""
    import tvm

    from forgeline.compile.cpu.amx_int8 import AMX_INT8
    from forgeline.compile.cpu.int8 import ISAS
    from forgeline.compile.targets import resolve_target
    from forgeline.runtime.host import read_cpu_features

    features = read_cpu_features()
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    mcpu = resolve_target("cpu").target  # this host's CPU, as forgeline compiles for it
    target = tvm.target.Target(mcpu)
    kernels = {"fp32": _fp32_gemm(weight, bias, target)}

    def with_attrs(isa):
        return tvm.target.Target({**mcpu, "mattr": sorted(set(mcpu.get("mattr", [])) | set(isa.llvm_attrs))})

    if set(AMX_INT8.cpu_features) <= features:
        kernels["int8-amx"] = _amx_int8_gemm(weight, bias, with_attrs(AMX_INT8))
    for name, isa in ISAS.items():
        if set(isa.cpu_features) <= features:
            kernels[f"int8-{name}"] = _int8_gemm(weight, bias, isa, with_attrs(isa))
    a = tvm.runtime.tensor(rng.standard_normal((m, k)).astype(np.float32))
    samples: dict[str, list[float]] = {name: [] for name in kernels}
    for name, run in kernels.items():  # warm up
        run(a)
    for _ in range(rounds):
        for name, run in kernels.items():
            started = time.perf_counter()
            for _ in range(reps):
                run(a)
            samples[name].append((time.perf_counter() - started) / reps * 1e3)
    return {name: float(np.median(s)) for name, s in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), help="MxKxN")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS', 'unset')}")
    for shape in args.shapes:
        m, k, n = (int(v) for v in shape.split("x"))
        times = bench_shape(m, k, n, args.rounds, args.reps)
        cells = [f"{name} {ms:.3f} ms ({2 * m * k * n / ms / 1e6:.0f} GOP/s, {times['fp32'] / ms:.2f}x fp32)"
                 for name, ms in times.items()]
        print(f"{shape:>16}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()

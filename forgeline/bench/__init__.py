"""Benchmarks of one artifact: eager, ONNX Runtime and TVM side by side, in one process.

``timing`` has the options, the interleaved rounds and the report; ``workload`` the inputs and
the FLOP model; ``backends`` one runner per backend; ``profile`` the per-kernel TVM profile.
``forgeline bench`` and the scripts in ``benchmarks/`` use it as a library.
"""

from .profile import KernelTime, profile_tvm_kernels
from .timing import (BACKENDS, BackendResult, BenchOptions, BenchReport, bench_artifact, host_info,
                     interleaved_samples)
from .workload import bench_inputs, estimate_flops

__all__ = ["BACKENDS", "BackendResult", "BenchOptions", "BenchReport", "KernelTime", "bench_artifact",
           "bench_inputs", "estimate_flops", "host_info", "interleaved_samples", "profile_tvm_kernels"]

"""What ``--precision`` does to a compile target: its build tag, LLVM features and requirements.

fp32 is the default and leaves the target as it is. fp16 is for CUDA targets (tensor-core
matmuls, compile/cuda/pipeline.py); its build gets a ``-fp16`` tag beside the fp32 one. bf16 is
for CPU targets and needs AMX (amx_bf16 and amx_tile):
forgeline refuses bf16 for this host's CPU when it has no AMX, rather than fall back, because
the only other bf16 path on x86 (AVX512-BF16's ``vdpbf16ps``) runs at or below fp32 FMA's FLOP
rate and so would be slower than the fp32 build, not faster. Naming an AMX CPU with ``mcpu``
cross-compiles a bf16 build here for such a host; it is then not checked here.

int8 (cpu.int8_layers) runs on every x86-64 CPU with AVX2: ``vpdpbusd`` where the CPU has
AVX512-VNNI (or its 256-bit form with AVX-VNNI), ``vpmaddubsw``/``vpmaddwd`` elsewhere. The
kernel follows the host's /proc/cpuinfo flags, or on a cross compile (``mcpu``) the features LLVM
gives that CPU; the build requires them.
"""

from __future__ import annotations

from dataclasses import replace

from forgeline.runtime.errors import ConfigError

from .cpu.amx import AMX_CPU_FEATURES, AMX_LLVM_ATTRS
from .cpu.int8 import AVX2, AVX_VNNI, VNNI, Int8Isa
from .targets import TargetSpec

PRECISIONS = ("fp32", "bf16", "int8", "fp16")
_TARGET_KIND = {"bf16": "llvm", "int8": "llvm", "fp16": "cuda"}  # where each reduced precision is built


def require_amx_host(cpu_features: frozenset, cpu_name: str) -> None:
    """Refuse bf16 for a host CPU without AMX, in one sentence."""
    missing = [f for f in AMX_CPU_FEATURES if f not in cpu_features]
    if missing:
        raise ConfigError(
            f"--precision bf16 needs a CPU with AMX ({', '.join(AMX_CPU_FEATURES)}), and this "
            f"host's CPU ({cpu_name}) lacks {', '.join(missing)}; forgeline does not fall back to "
            "a slower bf16 path, so build fp32 (the default) here, or cross-compile a bf16 build "
            "for an AMX host with --mcpu sapphirerapids.")


def int8_isa(cpu_features, cpu_name: str) -> Int8Isa:
    """The int8 kernel for a CPU with ``cpu_features`` (/proc/cpuinfo spelling), or a refusal."""
    for isa in (VNNI, AVX_VNNI, AVX2):  # the fastest first
        if set(isa.cpu_features) <= set(cpu_features):
            return isa
    raise ConfigError(f"--precision int8 needs a CPU with AVX2 (or AVX512-VNNI), and {cpu_name} has "
                      "neither; build fp32 (the default) here.")


def _int8_target(spec: TargetSpec, host_features: frozenset | None) -> TargetSpec:
    features = spec.requires.get("cpu_features", []) if host_features is None else host_features
    isa = int8_isa(features, spec.target.get("mcpu", "?"))
    target = dict(spec.target)
    target["mattr"] = sorted(set(target.get("mattr", [])) | set(isa.llvm_attrs))
    required = sorted(set(spec.requires.get("cpu_features", [])) | set(isa.cpu_features))
    return replace(spec, tag=f"{spec.tag}-int8", target=target,
                   requires={**spec.requires, "cpu_features": required})


def precision_target(spec: TargetSpec, precision: str, *, host_features: frozenset | None,
                     emulate_amx: bool = False) -> TargetSpec:
    """The target of a ``precision`` build; ``host_features`` None means a cross compile.

    ``emulate_amx`` runs the bf16 tile steps (int8: the dot products) as TIR loops (same
    numerics, slow, no AMX or VNNI needed): it lets tests check a build against eager fp32 on any
    host.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return spec
    if spec.kind != _TARGET_KIND[precision]:
        wanted = "cpu" if _TARGET_KIND[precision] == "llvm" else "cuda"
        raise ConfigError(f"--precision {precision} is built for --target {wanted} only, not for "
                          f"{spec.tag}; leave --precision at fp32 there.")
    if precision == "fp16":
        return replace(spec, tag=f"{spec.tag}-fp16")
    if emulate_amx:
        return replace(spec, tag=f"{spec.tag}-{precision}emu")
    if precision == "int8":
        return _int8_target(spec, host_features)
    if host_features is not None:
        require_amx_host(host_features, spec.target.get("mcpu", "?"))
    target = dict(spec.target)
    target["mattr"] = sorted(set(target.get("mattr", [])) | set(AMX_LLVM_ATTRS))
    features = sorted(set(spec.requires.get("cpu_features", [])) | set(AMX_CPU_FEATURES))
    return replace(spec, tag=f"{spec.tag}-{precision}", target=target,
                   requires={**spec.requires, "cpu_features": features})


def kernel_precision(precision: str, emulate_amx: bool, spec: TargetSpec | None = None) -> str:
    """The pipeline's precision switch (cpu.pipeline.apply_cpu_defaults).

    int8 names its kernel, chosen from the features ``spec`` (from ``precision_target``) requires:
    "int8-vnni" or "int8-avx2"; an emulated int8 build emulates the VNNI kernel.
    """
    if precision == "int8":
        features = spec.requires.get("cpu_features", []) if spec is not None else []
        isa = VNNI if emulate_amx else int8_isa(features, spec.tag if spec is not None else "?")
        return f"int8-{isa.name}" + ("-emulated" if emulate_amx else "")
    return f"{precision}-emulated" if precision != "fp32" and emulate_amx else precision


__all__ = ["PRECISIONS", "int8_isa", "kernel_precision", "precision_target", "require_amx_host"]

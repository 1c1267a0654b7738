"""What ``--precision`` does to a compile target: its build tag, LLVM features and requirements.

fp32 is the default and leaves the target as it is. bf16 needs AMX (amx_bf16 and amx_tile):
forgeline refuses bf16 for this host's CPU when it has no AMX, rather than fall back, because
the only other bf16 path on x86 (AVX512-BF16's ``vdpbf16ps``) runs at or below fp32 FMA's FLOP
rate and so would be slower than the fp32 build, not faster. Naming an AMX CPU with ``mcpu``
cross-compiles a bf16 build here for such a host; it is then not checked here.
"""

from __future__ import annotations

from dataclasses import replace

from forgeline.runtime.errors import ConfigError

from ..targets import TargetSpec
from .amx import AMX_CPU_FEATURES, AMX_LLVM_ATTRS

PRECISIONS = ("fp32", "bf16")


def require_amx_host(cpu_features: frozenset, cpu_name: str) -> None:
    """Refuse bf16 for a host CPU without AMX, in one sentence."""
    missing = [f for f in AMX_CPU_FEATURES if f not in cpu_features]
    if missing:
        raise ConfigError(
            f"--precision bf16 needs a CPU with AMX ({', '.join(AMX_CPU_FEATURES)}), and this "
            f"host's CPU ({cpu_name}) lacks {', '.join(missing)}; forgeline does not fall back to "
            "a slower bf16 path, so build fp32 (the default) here, or cross-compile a bf16 build "
            "for an AMX host with --mcpu sapphirerapids.")


def precision_target(spec: TargetSpec, precision: str, *, host_features: frozenset | None,
                     emulate_amx: bool = False) -> TargetSpec:
    """The target of a ``precision`` build; ``host_features`` None means a cross compile.

    ``emulate_amx`` runs the bf16 tile steps as TIR loops (same numerics, slow, no AMX needed):
    it lets tests check a bf16 build against eager fp32 on any host.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return spec
    if spec.kind != "llvm":
        raise ConfigError(f"--precision {precision} is for CPU targets (--target cpu) here, not "
                          f"{spec.kind}.")
    if emulate_amx:
        return replace(spec, tag=f"{spec.tag}-{precision}emu")
    if host_features is not None:
        require_amx_host(host_features, spec.target.get("mcpu", "?"))
    target = dict(spec.target)
    target["mattr"] = sorted(set(target.get("mattr", [])) | set(AMX_LLVM_ATTRS))
    features = sorted(set(spec.requires.get("cpu_features", [])) | set(AMX_CPU_FEATURES))
    return replace(spec, tag=f"{spec.tag}-{precision}", target=target,
                   requires={**spec.requires, "cpu_features": features})


def kernel_precision(precision: str, emulate_amx: bool) -> str:
    """The pipeline's precision switch (cpu.pipeline.apply_cpu_defaults)."""
    return f"{precision}-emulated" if precision != "fp32" and emulate_amx else precision


__all__ = ["PRECISIONS", "kernel_precision", "precision_target", "require_amx_host"]

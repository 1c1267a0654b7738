"""What ``--precision`` does to a compile target: its build tag, LLVM features and requirements.

fp32 is the default and leaves the target as it is. fp16 is for CUDA targets (tensor-core
matmuls, compile/cuda/pipeline.py); its build gets a ``-fp16`` tag beside the fp32 one. bf16 is
for CPU targets, on one of two kernels (``BF16_KERNELS``), picked by the CPU's features:

- ``amx``: AMX tiles (amx_bf16, amx_tile; cpu/amx.py), the fastest where the CPU has them;
- ``avx512bf16``: AVX512-BF16's ``vdpbf16ps`` (cpu/dpbf16.py), for CPUs with it and no AMX
  (AMD Zen 4/5, Intel Cooper Lake), where it doubles fp32 FMA's multiply-adds per instruction.

A CPU with neither is refused in one sentence naming the precisions it runs. The host's features
decide for a native build; an explicit ``mcpu`` cross-compiles for that CPU (LLVM's features of
it decide) and the build is then checked only if this host can run it. ``bf16_kernel`` forces
one kernel (tests, and timing the AVX512-BF16 kernel on an AMX host); a forced kernel other than
the one the CPU would get has the kernel in its tag.

int8 (cpu.int8_layers) runs on every x86-64 CPU with AVX2: ``vpdpbusd`` where the CPU has
AVX512-VNNI (or its 256-bit form with AVX-VNNI), ``vpmaddubsw``/``vpmaddwd`` elsewhere. The
kernel follows the host's /proc/cpuinfo flags, or on a cross compile (``mcpu``) the features LLVM
gives that CPU; the build requires them. Where the CPU has AMX-INT8 (amx_int8, amx_tile) the dense
layers run on AMX tiles (``tdpbssd``, cpu.amx_int8) instead, with VNNI kept for the graphs whose
row count is fixed small (decode) and for the MoE experts. ``int8_kernel`` forces one kernel
(tests, and timing VNNI on an AMX host), as ``bf16_kernel`` does for bf16.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from forgeline.runtime.errors import ConfigError

from .cpu.amx import AMX_CPU_FEATURES, AMX_LLVM_ATTRS
from .cpu.amx_int8 import AMX_INT8
from .cpu.dpbf16 import DPBF16_CPU_FEATURES, DPBF16_LLVM_ATTRS
from .cpu.int8 import AVX2, AVX_VNNI, VNNI, Int8Isa
from .targets import TargetSpec

PRECISIONS = ("fp32", "bf16", "int8", "fp16")
_TARGET_KIND = {"bf16": "llvm", "int8": "llvm", "fp16": "cuda"}  # where each reduced precision is built
# bf16 kernels, in order of preference: (cpu features, LLVM attributes)
# An AMX build's decode graphs run the AVX512-BF16 kernel (cpu/bf16.py, amx_rows_lowering): every
# AMX CPU has it, and the build requires it.
BF16_KERNELS = {"amx": (AMX_CPU_FEATURES + DPBF16_CPU_FEATURES, AMX_LLVM_ATTRS + DPBF16_LLVM_ATTRS),
                "avx512bf16": (DPBF16_CPU_FEATURES, DPBF16_LLVM_ATTRS)}
INT8_KERNELS = {isa.name: isa for isa in (AMX_INT8, VNNI, AVX_VNNI, AVX2)}  # every int8 kernel, by name
# The kernels "auto" picks from, the fastest first. On a 2-core Emerald Rapids gpt-small and
# bert-small ran 11-22% faster on the AMX int8 kernel than on VNNI at 1x128 and 8x128 once its
# tiles went through a contiguous scratch (one run; an earlier one had gpt 1x128 3% slower, the
# other cells faster). Stored straight into the output they had run 7-11% slower than VNNI.
INT8_AUTO_ORDER = (AMX_INT8, VNNI, AVX_VNNI, AVX2)


@dataclass(frozen=True)
class PrecisionPlan:
    """A precision build's target and the CPU pipeline's kernel switch (cpu.pipeline)."""

    spec: TargetSpec
    kernels: str  # "fp32", "fp16", "bf16" (AMX), "bf16-avx512bf16", "int8-<isa>", each + "-emulated" when so


def cpu_precisions() -> str:
    """The precisions every CPU runs, for refusals: all but bf16 and the CUDA ones."""
    return ", ".join(p for p in PRECISIONS if p != "bf16" and _TARGET_KIND.get(p, "llvm") == "llvm")


def bf16_kernel_for(cpu_features) -> str | None:
    """The bf16 kernel a CPU with ``cpu_features`` (/proc/cpuinfo spelling) runs best, or None."""
    for kernel, (needs, _) in BF16_KERNELS.items():
        if all(f in cpu_features for f in needs):
            return kernel
    return None


def require_bf16_host(cpu_features, cpu_name: str, kernel: str = "auto") -> str:
    """The bf16 kernel for this CPU (``kernel`` forces one); ConfigError, one sentence, if none."""
    best = bf16_kernel_for(cpu_features)
    if kernel == "auto" and best is not None:
        return best
    if kernel != "auto":
        if kernel not in BF16_KERNELS:
            raise ConfigError(f"Unknown bf16 kernel {kernel!r}; choose one of {', '.join(BF16_KERNELS)}.")
        missing = [f for f in BF16_KERNELS[kernel][0] if f not in cpu_features]
        if not missing:
            return kernel
        raise ConfigError(f"The {kernel} bf16 kernel needs {', '.join(missing)}, which the CPU "
                          f"{cpu_name} lacks; leave the bf16 kernel to forgeline's choice.")
    raise ConfigError(
        f"--precision bf16 needs a CPU with AVX512-BF16 (avx512_bf16) or AMX (amx_bf16, amx_tile), "
        f"and the CPU {cpu_name} has neither: build {cpu_precisions()} for it, or cross-compile "
        f"bf16 for another CPU with --mcpu (znver4 for AVX512-BF16, sapphirerapids for AMX).")


def require_amx_host(cpu_features: frozenset, cpu_name: str) -> None:
    """Refuse the AMX kernel for a CPU without AMX, in one sentence."""
    require_bf16_host(cpu_features, cpu_name, "amx")


def int8_isa(cpu_features, cpu_name: str, kernel: str = "auto") -> Int8Isa:
    """The int8 kernel for a CPU with ``cpu_features`` (/proc/cpuinfo spelling), or a refusal;
    ``kernel`` (a name of ``INT8_KERNELS``) forces one the CPU has."""
    if kernel != "auto":
        forced = _int8_kernel(kernel)
        missing = [f for f in forced.cpu_features if f not in cpu_features]
        if missing:
            raise ConfigError(f"The {kernel} int8 kernel needs {', '.join(missing)}, which the CPU "
                              f"{cpu_name} lacks; leave the int8 kernel to forgeline's choice.")
        return forced
    for isa in INT8_AUTO_ORDER:
        if set(isa.cpu_features) <= set(cpu_features):
            return isa
    raise ConfigError(f"--precision int8 needs a CPU with AVX2 (or AVX512-VNNI), and {cpu_name} has "
                      "neither; build fp32 (the default) here.")


def _int8_kernel(kernel: str) -> Int8Isa:
    if kernel not in INT8_KERNELS:
        raise ConfigError(f"Unknown int8 kernel {kernel!r}; choose one of {', '.join(INT8_KERNELS)}.")
    return INT8_KERNELS[kernel]


def _int8_target(spec: TargetSpec, host_features: frozenset | None, kernel: str = "auto") -> TargetSpec:
    features = spec.requires.get("cpu_features", []) if host_features is None else host_features
    isa = int8_isa(features, spec.target.get("mcpu", "?"), kernel)
    # a forced kernel other than the CPU's own has it in the tag: both builds can sit side by side
    suffix = "" if kernel == "auto" or isa == int8_isa(features, "?") else f"-{isa.name}"
    target = dict(spec.target)
    target["mattr"] = sorted(set(target.get("mattr", [])) | set(isa.llvm_attrs))
    required = sorted(set(spec.requires.get("cpu_features", [])) | set(isa.cpu_features))
    return replace(spec, tag=f"{spec.tag}-int8{suffix}", target=target,
                   requires={**spec.requires, "cpu_features": required})


def kernel_precision(precision: str, emulated: bool, spec: TargetSpec | None = None,
                     kernel: str = "auto") -> str:
    """The int8 pipeline switch: "int8-<isa>", the kernel chosen from the features ``spec`` requires
    (from ``_int8_target``) or forced by ``kernel``; an emulated int8 build emulates the VNNI kernel
    unless ``kernel`` names another."""
    if precision != "int8":
        raise ValueError(f"kernel_precision is for int8, not {precision}; plan_precision gives the others.")
    features = spec.requires.get("cpu_features", []) if spec is not None else []
    if emulated:
        isa = VNNI if kernel == "auto" else _int8_kernel(kernel)
    else:
        isa = int8_isa(features, spec.tag if spec is not None else "?", kernel)
    return f"int8-{isa.name}" + ("-emulated" if emulated else "")


def plan_precision(spec: TargetSpec, precision: str, *, host_features: frozenset | None,
                   emulate: bool = False, bf16_kernel: str = "auto", int8_kernel: str = "auto") -> PrecisionPlan:
    """The target of a ``precision`` build; ``host_features`` None means a cross compile.

    ``emulate`` runs the bf16 kernel's instructions as TIR loops (same numerics, slow, no AMX or
    AVX512-BF16 needed): it lets tests check a bf16 build against eager fp32 on any host. It
    emulates the AMX kernel unless ``bf16_kernel`` names the other.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return PrecisionPlan(spec, "fp32")
    if spec.kind != _TARGET_KIND[precision]:
        wanted = "cpu" if _TARGET_KIND[precision] == "llvm" else "cuda"
        raise ConfigError(f"--precision {precision} is built for --target {wanted} only, not for "
                          f"{spec.tag}; leave --precision at fp32 there.")
    if precision == "fp16":
        return PrecisionPlan(replace(spec, tag=f"{spec.tag}-fp16"), "fp16")
    if precision == "int8":
        emulated = "-int8emu" if int8_kernel in ("auto", VNNI.name) else f"-int8-{int8_kernel}emu"
        target = (replace(spec, tag=f"{spec.tag}{emulated}") if emulate
                  else _int8_target(spec, host_features, int8_kernel))
        return PrecisionPlan(target, kernel_precision("int8", emulate, target, int8_kernel))
    cpu_name = spec.target.get("mcpu", "?")
    features = host_features if host_features is not None else spec.requires.get("cpu_features", [])
    if emulate:
        kernel = "amx" if bf16_kernel == "auto" else bf16_kernel
        if kernel not in BF16_KERNELS:
            raise ConfigError(f"Unknown bf16 kernel {kernel!r}; choose one of {', '.join(BF16_KERNELS)}.")
        tag = "-bf16" if kernel == "amx" else f"-bf16-{kernel}"
        return PrecisionPlan(replace(spec, tag=f"{spec.tag}{tag}emu"), _switch(kernel) + "-emulated")
    kernel = require_bf16_host(features, cpu_name, bf16_kernel)
    needs, attrs = BF16_KERNELS[kernel]
    target = dict(spec.target)
    target["mattr"] = sorted(set(target.get("mattr", [])) | set(attrs))
    cpu_features = sorted(set(spec.requires.get("cpu_features", [])) | set(needs))
    tag = "-bf16" if kernel == bf16_kernel_for(features) else f"-bf16-{kernel}"
    return PrecisionPlan(replace(spec, tag=f"{spec.tag}{tag}", target=target,
                                 requires={**spec.requires, "cpu_features": cpu_features}), _switch(kernel))


def _switch(kernel: str) -> str:
    return "bf16" if kernel == "amx" else f"bf16-{kernel}"


def precision_target(spec: TargetSpec, precision: str, *, host_features: frozenset | None,
                     emulate_amx: bool = False, bf16_kernel: str = "auto") -> TargetSpec:
    """The target of a ``precision`` build (``plan_precision``'s spec)."""
    return plan_precision(spec, precision, host_features=host_features, emulate=emulate_amx,
                          bf16_kernel=bf16_kernel).spec


__all__ = ["BF16_KERNELS", "INT8_KERNELS", "PRECISIONS", "PrecisionPlan", "bf16_kernel_for", "cpu_precisions", "int8_isa",
           "kernel_precision", "plan_precision", "precision_target", "require_amx_host", "require_bf16_host"]

"""Which reduced-precision kernels a recorded build runs, so that its tuned buckets run them too.

A bucket is a static-shape copy of its build: the same dense-layer kernels (int8 on AMX, VNNI or AVX2,
bf16 on AMX or AVX512-BF16, or their TIR emulations) with MetaSchedule tuning what stays fp32
around them (attention, layer norm, softmax, ...). The kernel switch is read back from what the
build record already holds: its precision, its tag (``-bf16-avx512bf16`` for a forced kernel,
``emu`` at the end for an emulated one) and the CPU features it requires, the same features
``compile/precision.py`` chose the kernel from.
"""

from __future__ import annotations

import dataclasses

from forgeline.runtime.errors import ConfigError
from forgeline.runtime.format import BuildRecord

from ..cpu.attention_bf16 import ATTENTION_SWITCH, ATTENTION_TAG
from ..precision import bf16_kernel_for, kernel_precision
from ..targets import TargetSpec


def build_kernels(build: BuildRecord) -> str:
    """The CPU pipeline's kernel switch of ``build`` ("fp32", "int8-vnni", "bf16-avx512bf16-emulated", ...)."""
    emu = "emu" if build.tag.endswith("emu") else ""
    if build.tag.removesuffix(emu).endswith(ATTENTION_TAG):  # attention in bf16 (cpu/attention_bf16.py)
        tag = build.tag.removesuffix(emu).removesuffix(ATTENTION_TAG) + emu
        return _dense_kernels(dataclasses.replace(build, tag=tag)) + ATTENTION_SWITCH
    return _dense_kernels(build)


def _dense_kernels(build: BuildRecord) -> str:
    if build.precision == "fp32":
        return "fp32"
    if build.kind != "llvm":
        raise ConfigError(f"Tuning a {build.precision} {build.kind} build is not supported; tune the "
                          f"fp32 build of that target, or a CPU build at {build.precision}.")
    emulated = build.tag.endswith("emu")
    if build.precision == "int8":
        spec = TargetSpec(tag=build.tag, kind=build.kind, target=build.target, requires=build.requires)
        # the features a build requires name its kernel (AMX-INT8 where they hold amx_int8); a
        # forced AMX build on a host without it (an emulated one) names AMX in its tag
        kernel = "amx" if "-int8-amx" in build.tag else "auto"
        return kernel_precision("int8", emulated, spec, kernel)
    if build.precision != "bf16":
        raise ConfigError(f"Build {build.tag} has precision {build.precision!r}, which tuning does not know.")
    if "-bf16-avx512bf16" in build.tag:  # a forced kernel carries its name in the tag
        kernel = "avx512bf16"
    elif emulated:
        kernel = "amx"  # an emulated build emulates AMX unless its tag names the other kernel
    else:
        kernel = bf16_kernel_for(build.requires.get("cpu_features", [])) or "amx"
    switch = "bf16" if kernel == "amx" else f"bf16-{kernel}"
    return switch + ("-emulated" if emulated else "")


__all__ = ["build_kernels"]

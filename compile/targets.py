"""Compile targets: what a build is for, and what a host needs to run it.

A ``TargetSpec`` names one build folder (``tvm/<tag>/``), carries the TVM target in its dict form
(TVM 0.27 rejects the old ``"llvm -mcpu=..."`` strings) and records, in ``requires``, what the
runtime must find on a host before it loads the build: the CPU architecture and the ISA
extensions the chosen ``mcpu`` lets LLVM use, or the CUDA compute capability.
"""

from __future__ import annotations

import logging
import platform
import re
from dataclasses import dataclass, field
from typing import Any

from forgeline.runtime.errors import ConfigError, MissingDependencyError
from forgeline.runtime.host import cpu_core_count, normalize_arch, read_cpu_features

logger = logging.getLogger(__name__)

PRESETS = ("cpu", "cuda")
DEFAULT_CUDA_ARCH = "sm_90"  # H100/H200, the GPUs this project is benchmarked on

# ISA extensions that decide whether LLVM's code runs on a host, spelled as /proc/cpuinfo spells
# them (the runtime compares against that file), keyed by LLVM's spelling. A short list on
# purpose: every entry is a feature whose absence makes the build die with SIGILL.
_LLVM_TO_CPUINFO = {
    "x86_64": {
        "sse4.2": "sse4_2",
        "avx": "avx",
        "avx2": "avx2",
        "fma": "fma",
        "f16c": "f16c",
        "avx512f": "avx512f",
        "avx512cd": "avx512cd",
        "avx512bw": "avx512bw",
        "avx512dq": "avx512dq",
        "avx512vl": "avx512vl",
        "avx512vnni": "avx512_vnni",
        "avx512bf16": "avx512_bf16",
        "avx512fp16": "avx512_fp16",
        "amx-tile": "amx_tile",
        "amx-bf16": "amx_bf16",
        "amx-int8": "amx_int8",
    },
    "aarch64": {
        "neon": "asimd",
        "fullfp16": "asimdhp",
        "dotprod": "asimddp",
        "i8mm": "i8mm",
        "bf16": "bf16",
        "sve": "sve",
        "sve2": "sve2",
    },
}


@dataclass(frozen=True)
class TargetSpec:
    """One compile target and what running its build demands of a host."""

    tag: str  # folder name under tvm/, e.g. "cpu-znver4", "cuda-sm90"
    kind: str  # "llvm" | "cuda"
    target: dict = field(hash=False)  # TVM Target dict: kind, mcpu, num-cores / arch, host
    requires: dict = field(hash=False)  # llvm: {arch, cpu_features}; cuda: {device, sm, arch}

    def to_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "kind": self.kind, "target": dict(self.target),
                "requires": dict(self.requires)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetSpec:
        missing = {"tag", "kind", "target", "requires"} - set(data)
        if missing:
            raise ConfigError(
                f"The target record lacks {sorted(missing)}; it must hold tag, kind, target and "
                "requires, as TargetSpec.to_dict writes them."
            )
        return cls(tag=data["tag"], kind=data["kind"], target=dict(data["target"]),
                   requires=dict(data["requires"]))


def _import_tvm_codegen():
    from .guards import require_full_tvm

    require_full_tvm()
    try:
        from tvm.target import Target, codegen
    except ImportError as exc:  # pragma: no cover - tvm is a declared dependency
        raise MissingDependencyError(
            "Resolving a compile target needs Apache TVM; install it with "
            "`pip install apache-tvm==0.27.* apache-tvm-ffi==0.1.14.post1`."
        ) from exc
    return Target, codegen


def host_cpu_name() -> str:
    """LLVM's name for this machine's CPU (e.g. "znver4", "emeraldrapids")."""
    _, codegen = _import_tvm_codegen()
    name = str(codegen.llvm_get_system_cpu())
    if not name or name == "generic":
        raise ConfigError(
            "LLVM could not name this host's CPU, so the target would not say what it was built "
            "for; pass mcpu= explicitly (e.g. mcpu='znver4' or 'x86-64-v3')."
        )
    return name


def _llvm_isa_features(mcpu: str, arch: str) -> list[str]:
    """The ISA extensions LLVM enables for ``mcpu``, in /proc/cpuinfo spelling."""
    table = _LLVM_TO_CPUINFO.get(arch, {})
    if not table:
        return []
    Target, codegen = _import_tvm_codegen()
    try:
        llvm_features = codegen.llvm_get_cpu_features(Target({"kind": "llvm", "mcpu": mcpu}))
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error classes here
        # LLVM could not answer (e.g. a cross mcpu); the build host's flags are the best record.
        logger.warning("LLVM gave no feature list for mcpu=%s (%s); using this host's flags.",
                       mcpu, exc)
        host_flags = read_cpu_features()
        return sorted(flag for flag in table.values() if flag in host_flags)
    return sorted(table[name] for name in llvm_features if name in table)


def check_cpu_name(mcpu: str) -> None:
    """Refuse a CPU name LLVM does not know (LLVM would build for "generic" and say so only in a log)."""
    _, codegen = _import_tvm_codegen()
    triple = str(codegen.llvm_get_system_triple())
    if not bool(codegen.llvm_is_valid_cpu(mcpu, triple)):
        from tvm.target import Target

        known = sorted(str(n) for n in codegen.llvm_get_cpu_archlist(Target({"kind": "llvm"})))
        close = [n for n in known if n.startswith(mcpu[:3])][:8] or known[:8]
        raise ConfigError(f"--mcpu {mcpu!r} is not a CPU name LLVM knows for {triple}; use one of its names, "
                          f"e.g. {', '.join(close)} (`llc -mcpu=help` lists them all).")


def _cpu_spec(mcpu: str | None, num_cores: int | None) -> TargetSpec:
    if mcpu is not None:
        check_cpu_name(mcpu)
    mcpu = mcpu or host_cpu_name()
    num_cores = num_cores or cpu_core_count()
    if num_cores < 1:
        raise ConfigError(f"num_cores={num_cores} must be at least 1.")
    arch = normalize_arch(platform.machine())
    target = {"kind": "llvm", "mcpu": mcpu, "num-cores": num_cores}
    requires = {"arch": arch, "cpu_features": _llvm_isa_features(mcpu, arch)}
    tag = "cpu-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", mcpu)
    return TargetSpec(tag=tag, kind="llvm", target=target, requires=requires)


def _cuda_spec(arch: str | None, num_cores: int | None) -> TargetSpec:
    arch = arch or DEFAULT_CUDA_ARCH
    match = re.fullmatch(r"sm_(\d+)[af]?", arch)
    if match is None:
        raise ConfigError(
            f"CUDA arch {arch!r} is not of the form 'sm_<major><minor>'; pass e.g. arch='sm_90'."
        )
    # The host side of a CUDA build only launches kernels and runs the VM, so it is built for the
    # generic CPU of its architecture: an AVX-512 build box must not yield a GPU artifact that
    # dies with SIGILL on a GPU host whose CPU lacks AVX-512.
    host = {"kind": "llvm", "num-cores": num_cores or cpu_core_count()}
    target = {"kind": "cuda", "arch": arch, "host": host}
    requires = {"device": "cuda", "sm": int(match.group(1)),
                "arch": normalize_arch(platform.machine())}
    return TargetSpec(tag=f"cuda-sm{match.group(1)}", kind="cuda", target=target,
                      requires=requires)


def resolve_target(preset: str, *, arch: str | None = None, mcpu: str | None = None,
                   num_cores: int | None = None) -> TargetSpec:
    """Turn a preset name ("cpu", "cuda") and optional overrides into a ``TargetSpec``.

    ``"cpu"`` is LLVM for this host's CPU (its LLVM name, e.g. "znver4", unless ``mcpu`` is
    given) using ``num_cores`` threads (default: the physical cores). ``"cuda"`` is CUDA for
    ``arch`` (default sm_90) with a portable LLVM host.
    """
    if preset == "cpu":
        if arch is not None:
            raise ConfigError(
                f"arch={arch!r} applies to the 'cuda' preset only; for 'cpu' choose the CPU with "
                "mcpu= (e.g. mcpu='znver4')."
            )
        spec = _cpu_spec(mcpu, num_cores)
    elif preset == "cuda":
        if mcpu is not None:
            raise ConfigError(
                f"mcpu={mcpu!r} applies to the 'cpu' preset only; for 'cuda' choose the GPU with "
                "arch= (e.g. arch='sm_90')."
            )
        spec = _cuda_spec(arch, num_cores)
    else:
        raise ConfigError(
            f"Unknown target preset {preset!r}; choose one of {', '.join(PRESETS)}."
        )
    logger.info("Target %s: %s (requires %s)", spec.tag, spec.target, spec.requires)
    return spec


__all__ = ["PRESETS", "TargetSpec", "host_cpu_name", "resolve_target"]

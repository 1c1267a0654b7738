"""What this host can run: CPU architecture, ISA extensions, CUDA devices.

Pure standard library on purpose: the runtime decides which build of an artifact fits before it
imports TVM, and it must never pull in torch to find a GPU. CUDA devices are found through the
driver library itself (``libcuda.so.1``) with ctypes, which is quiet and harmless where there is
no driver.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}

# cuDeviceGetAttribute attribute ids (CUDA driver API, cuda.h).
_CU_ATTR_CC_MAJOR = 75
_CU_ATTR_CC_MINOR = 76


@dataclass(frozen=True)
class HostInfo:
    arch: str  # "x86_64", "aarch64", ...
    cpu_features: frozenset = frozenset()  # /proc/cpuinfo flags, e.g. "avx512f"
    cuda_devices: list = field(default_factory=list, hash=False)  # capability per GPU: [90]
    cuda_problem: str = ""  # without devices: what is missing (cuda_driver_problem), for messages


def normalize_arch(machine: str) -> str:
    machine = machine.lower()
    return _ARCH_ALIASES.get(machine, machine)


def read_cpu_features(cpuinfo_path: str = "/proc/cpuinfo") -> frozenset:
    """The CPU's ISA flags as Linux lists them ("flags" on x86, "Features" on Arm)."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        logger.debug("No %s here; CPU features are unknown.", cpuinfo_path)
    return frozenset()


def cpu_core_count() -> int:
    """Physical cores this process may use; hyper-threads share one core's vector units."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    siblings_seen = False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            physical_id = core_id = None
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical_id = value.strip()
                elif key == "core id":
                    core_id = value.strip()
                    siblings_seen = True
                elif not key and physical_id is not None and core_id is not None:
                    cores.add((physical_id, core_id))
                    physical_id = core_id = None
            if physical_id is not None and core_id is not None:
                cores.add((physical_id, core_id))
    except OSError:
        pass
    physical = len(cores) if siblings_seen and cores else usable
    return max(1, min(physical, usable))


def cuda_driver_problem() -> str:
    """Why this host cannot run CUDA code, as a clause naming what is missing; "" when it can."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "the NVIDIA driver library libcuda.so.1 is not found, so no NVIDIA driver is installed"
    try:
        status = libcuda.cuInit(0)
        if status != 0:
            return (f"the NVIDIA driver (libcuda.so.1) is there but cuInit failed with CUDA error "
                    f"{status} (no usable GPU, or a driver/kernel-module mismatch)")
        count = ctypes.c_int(0)
        if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
            return "the NVIDIA driver (libcuda.so.1) reports no CUDA device"
    except (AttributeError, OSError) as exc:
        return f"the NVIDIA driver (libcuda.so.1) did not answer ({exc})"
    return ""


def cuda_compute_capabilities() -> list[int]:
    """Compute capability of each CUDA device as an int (9.0 -> 90); [] without a driver."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return []
    try:
        if libcuda.cuInit(0) != 0:
            return []
        count = ctypes.c_int(0)
        if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return []
        capabilities = []
        for ordinal in range(count.value):
            device = ctypes.c_int(0)
            major, minor = ctypes.c_int(0), ctypes.c_int(0)
            if libcuda.cuDeviceGet(ctypes.byref(device), ordinal) != 0:
                continue
            libcuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_ATTR_CC_MAJOR, device)
            libcuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_ATTR_CC_MINOR, device)
            capabilities.append(major.value * 10 + minor.value)
        return capabilities
    except (AttributeError, OSError) as exc:
        logger.debug("The CUDA driver did not answer (%s); assuming no CUDA device.", exc)
        return []


def describe_host() -> HostInfo:
    devices = cuda_compute_capabilities()
    return HostInfo(
        arch=normalize_arch(platform.machine()),
        cpu_features=read_cpu_features(),
        cuda_devices=devices,
        cuda_problem="" if devices else cuda_driver_problem(),
    )


def can_run(requires: dict, host: HostInfo) -> tuple[bool, str]:
    """Whether ``host`` meets a build's ``requires``; if not, a sentence that says why."""
    built_arch = requires.get("arch")
    if built_arch and normalize_arch(built_arch) != host.arch:
        return False, (f"The build is for {built_arch} but this host is {host.arch}; "
                       "compile the artifact for this host's target.")
    if requires.get("device") == "cuda":
        sm = int(requires.get("sm", 0))
        if not host.cuda_devices:
            why = f" ({host.cuda_problem})" if host.cuda_problem else ""
            return False, (f"The build is for CUDA sm_{sm} but this host has no CUDA device{why}; "
                           "run it on a GPU host or use a CPU build.")
        # SASS for sm_XY runs on the same major with minor >= Y; the embedded PTX lets the driver
        # JIT for later majors.
        if not any(cc >= sm for cc in host.cuda_devices):
            found = ", ".join(f"sm_{cc}" for cc in host.cuda_devices)
            return False, (f"The build is for CUDA sm_{sm} but this host's GPUs are {found}; "
                           "compile for one of those with arch='sm_XY'.")
        return True, f"This host has a CUDA device that runs sm_{sm} code."
    missing = sorted(set(requires.get("cpu_features", ())) - host.cpu_features)
    if missing and host.cpu_features:
        return False, (f"The build is for {built_arch or 'this architecture'} with "
                       f"{', '.join(missing)}, and this host lacks {', '.join(missing)}; compile "
                       "for this host's CPU (target preset 'cpu' on it, or a lower mcpu).")
    if missing:
        logger.warning("CPU features of this host are unknown; cannot confirm %s.", missing)
    return True, "This host's CPU has every ISA extension the build uses."


__all__ = ["HostInfo", "can_run", "cpu_core_count", "cuda_compute_capabilities", "cuda_driver_problem",
           "describe_host", "normalize_arch", "read_cpu_features"]

"""Ask Linux for the AMX tile state before a bf16 build runs its first tile instruction.

Linux (5.16+) keeps AMX's 8 KB tile data out of a process's saved state until the process asks
for it with ``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``. Without that request the
first ``ldtilecfg``/``tileloadd`` kills the process with SIGILL, so the runtime asks once, when it
loads a build whose requirements name ``amx_tile``. Standard library only (ctypes).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

from .errors import TargetMismatchError

logger = logging.getLogger(__name__)

_SYS_ARCH_PRCTL = 158  # x86-64 syscall number
_ARCH_GET_XCOMP_PERM = 0x1022
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
AMX_REQUIREMENT = "amx_tile"  # the cpu_features entry that makes a build need the permission

_granted = False


def needs_amx(requires: dict) -> bool:
    return AMX_REQUIREMENT in requires.get("cpu_features", ())


def _permitted_mask(libc) -> int:
    mask = ctypes.c_uint64(0)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_PERM, ctypes.byref(mask)) != 0:
        return 0
    return mask.value


def request_amx_permission() -> None:
    """Grant this process the AMX tile state; raise ``TargetMismatchError`` where Linux refuses.

    Idempotent and cheap after the first call. The permission holds for every thread of the
    process, including TVM's thread pool started later.
    """
    global _granted
    if _granted:
        return
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise TargetMismatchError(
            f"The build uses AMX tiles, which need Linux on x86-64; this host is "
            f"{platform.system()} on {platform.machine()}, so use an fp32 build here.")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0:
        err = ctypes.get_errno()
        raise TargetMismatchError(
            f"Linux refused this process the AMX tile state (arch_prctl: {os.strerror(err)}); the "
            "CPU or kernel (5.16+ needed) lacks AMX, so use an fp32 build on this host.")
    if not _permitted_mask(libc) & (1 << _XFEATURE_XTILEDATA):
        raise TargetMismatchError(
            "Linux accepted the AMX request but does not list the tile state as permitted; use "
            "an fp32 build on this host.")
    _granted = True
    logger.info("Linux granted this process the AMX tile state.")


__all__ = ["AMX_REQUIREMENT", "needs_amx", "request_amx_permission"]

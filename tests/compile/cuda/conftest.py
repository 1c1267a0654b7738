"""Shared pieces of the CUDA compile tests: a CUDA target and the nvcc this machine has."""

from __future__ import annotations

import pytest

from forgeline.compile.cuda.nvcc import find_nvcc


@pytest.fixture(scope="session")
def nvcc():
    """The nvcc builds use; the tests that need a real one skip only where none is installed
    (a machine set up by scripts/setup.sh has NVIDIA's PyPI nvcc)."""
    found = find_nvcc()
    if found is None:
        pytest.skip("no nvcc: install forgeline[cuda-build] (scripts/setup.sh does)")
    return found


def cuda_target(arch: str = "sm_90"):
    from tvm.target import Target

    return Target({"kind": "cuda", "arch": arch, "host": {"kind": "llvm"}})

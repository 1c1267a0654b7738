"""How the Relax VM runs a CPU build's graphs: its instructions as native code, or interpreted.

A Relax graph is a list of VM instructions around the kernels: check the inputs, compute the
symbolic shapes, allocate storage, call a kernel, drop a reference. In ``bytecode`` mode the VM
interprets them one at a time; in ``compiled`` mode relax.build turns each Relax function into a
TIR function (``__vmtir__main``) that makes the same calls from native code. The kernels, the
weights, the memory plan and every input check are the same; only the interpreter's dispatch is
gone, about 0.2 ms, or 5%, of a 1x128 call of gpt-small and bert-small in bf16 and int8
(docs/benchmarks.md).

CPU builds are compiled by default. The interpreter has a hook before and after every call that
``forgeline bench --profile`` uses to time each kernel; compiled code has none, so a build meant
for profiling is compiled with ``--vm bytecode``. Its tag ends in ``-bytecode``: it sits beside the
build that is run rather than replacing it (and that build's tuned buckets), and the runtime picks
the compiled build first. CUDA builds stay in bytecode: compiled mode has not been run with the
CUDA export (compile/cuda/export.py) or on a GPU.
"""

from __future__ import annotations

from forgeline.runtime.errors import ConfigError
from forgeline.runtime.schema import VM_MODES, vm_tag

DEFAULT_CPU_VM = "compiled"


def check_vm_mode(mode: str) -> str:
    """``mode`` when it is one of VM_MODES; ConfigError, one sentence, otherwise."""
    if mode not in VM_MODES:
        raise ConfigError(f"vm={mode!r} is not one of {', '.join(VM_MODES)}.")
    return mode


def vm_mode_for(kind: str, mode: str) -> str:
    """The mode a build of target kind ``kind`` ("llvm", "cuda") is made in when ``mode`` is asked."""
    return check_vm_mode(mode) if kind == "llvm" else "bytecode"


def build_executable(mod, target, mode: str, relax_pipeline=None):
    """relax.build of an already lowered (``relax_pipeline=None``) or lowering module in ``mode``."""
    from tvm import relax

    return relax.build(mod, target, relax_pipeline=relax_pipeline, exec_mode=check_vm_mode(mode))


__all__ = ["DEFAULT_CPU_VM", "build_executable", "check_vm_mode", "vm_mode_for", "vm_tag"]

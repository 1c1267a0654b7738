"""Loading TVM's tensor intrinsics: only the named target's, and without inspect.getmodule.

The cause of the slow import (inspect.stack reading every frame's module by scanning sys.modules)
is checked directly: while the intrinsics load, inspect.getmodule must never be asked for a frame's
module (a function's module is a dictionary lookup; a frame's is the scan).
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

from forgeline.compile.tensor_intrinsics import frame_stack


def _both_stacks():
    ours, stock = frame_stack(), inspect.stack()  # one line: both see the same line numbers
    return ours, stock


def test_frame_stack_gives_what_inspect_stack_gives():
    ours, stock = _both_stacks()
    assert len(ours) == len(stock)
    for mine, theirs in zip(ours, stock):
        assert mine.frame is theirs.frame
        assert (mine.filename, mine.lineno, mine.function) == (theirs.filename, theirs.lineno, theirs.function)
        assert mine.code_context == theirs.code_context
        assert mine.index == theirs.index
    assert ours[0].code_context[0].strip().startswith("ours, stock = frame_stack()")


_PROBE = textwrap.dedent("""
    import inspect, sys
    from forgeline.compile.tensor_intrinsics import load_tensor_intrinsics
    import tvm.s_tir, tvm.script.tirx  # their own import-time TVMScript is not what is tested
    calls = []
    real_getmodule = inspect.getmodule
    def counting_getmodule(obj, *rest):
        if inspect.isframe(obj):  # a frame: the slow path, a scan of sys.modules
            calls.append(obj)
        return real_getmodule(obj, *rest)
    inspect.getmodule = counting_getmodule
    assert load_tensor_intrinsics(("cuda",)) is True
    import tvm.s_tir.tensor_intrin  # what MetaSchedule's TuneContext does: must load nothing more
    from tvm.s_tir import TensorIntrin
    TensorIntrin.get("mma_ldmatrix_f16_a")  # raises if the CUDA intrinsics were not registered
    loaded = sorted(m for m in sys.modules if m.startswith("tvm.s_tir.tensor_intrin."))
    import tvm.tirx.script.parser.entry as entry
    print(len(calls), loaded, entry.inspect is inspect)
""")


def test_cuda_intrinsics_load_alone_and_without_getmodule():
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.strip().rsplit("\n", 1)[-1]
    assert line == "0 ['tvm.s_tir.tensor_intrin.cuda'] True", line


def test_loading_into_an_existing_package_adds_the_module():
    probe = textwrap.dedent("""
        import sys
        from forgeline.compile.tensor_intrinsics import load_tensor_intrinsics
        assert load_tensor_intrinsics(("x86",)) is True
        assert load_tensor_intrinsics(("cuda",)) is False
        print(sorted(m for m in sys.modules if m.startswith("tvm.s_tir.tensor_intrin.")))
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['tvm.s_tir.tensor_intrin.cuda', 'tvm.s_tir.tensor_intrin.x86']"

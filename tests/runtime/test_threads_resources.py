"""One Model from many threads, load/close cycles, and no process-wide side effects."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import forgeline.runtime as rt
from forgeline.runtime.errors import ArtifactError

THREADS, CALLS = 6, 40


def _inputs(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 200, size=(1 + i % 3, 4 + i % 5), dtype=np.int64)  # shapes vary per call


@pytest.mark.parametrize("backend", ["tvm", "ort"])
def test_one_model_many_threads_matches_one_thread(tiny_artifact, backend):
    with rt.load(tiny_artifact("gpt"), backend=backend) as model:
        want = [model.run(input_ids=_inputs(i))["logits"] for i in range(CALLS)]  # one thread
        failures: list[str] = []

        def work(offset: int) -> None:
            for k in range(CALLS):
                i = (k + offset) % CALLS
                try:
                    if not np.array_equal(model.run(input_ids=_inputs(i))["logits"], want[i]):
                        failures.append(f"call {i}: different result")
                except Exception as exc:  # noqa: BLE001 - every failure is counted
                    failures.append(f"call {i}: {exc!r}")

        threads = [threading.Thread(target=work, args=(t * 7,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == [], failures[:5]


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_load_close_cycles_do_not_grow_the_process(tiny_artifact):
    path = tiny_artifact("gpt")
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    for _ in range(5):  # warm: imports, TVM's thread pool, the module cache
        with rt.load(path) as model:
            model.run(input_ids=ids)
    gc.collect()
    start = _rss()
    cycles = 200
    for _ in range(cycles):
        with rt.load(path) as model:
            model.run(input_ids=ids)
    gc.collect()
    grown = _rss() - start
    # Before: every load kept ~181 KiB (TVM's load_module), 36 MB over 200 cycles. A leak of even
    # a tenth of that per load would exceed this bound.
    assert grown < cycles * 18 * 1024, f"grew {grown / 1e6:.1f} MB over {cycles} cycles"
    with pytest.raises(ArtifactError, match="closed"):
        model.run(input_ids=ids)


def test_runtime_leaves_no_environment_behind(tiny_artifact):
    """A process that embeds the runtime: os.environ (what children inherit) is unchanged but for
    TVM_NUM_THREADS, TVM uses every core, and a compile in that process still finds the whole of
    TVM. TVM_NUM_THREADS stays set on purpose: TVM reads it at every parallel launch, and without
    it ran every kernel on one thread of a 2-core machine (runtime/backends/environ.py)."""
    code = (
        "import json, os, sys, numpy as np\n"
        "before = dict(os.environ)\n"
        "import forgeline.runtime as rt\n"
        f"m = rt.load({str(tiny_artifact('gpt'))!r})\n"
        "m.run(input_ids=np.array([[1, 2]], dtype=np.int64))\n"
        "import tvm\n"
        "from forgeline.runtime.host import cpu_core_count\n"
        "from forgeline.compile.targets import resolve_target\n"
        "try:\n    resolve_target('cpu'); err = ''\n"
        "except Exception as e:\n    err = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps({'changed': sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k)),"
        " 'tvm_num_threads': os.environ.get('TVM_NUM_THREADS'), 'threads': tvm.runtime.num_threads(), 'cores': cpu_core_count(), 'umask': int(open('/proc/self/status').read().split('Umask:')[1].split()[0], 8), 'err': err}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TVM_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["changed"] == ["TVM_NUM_THREADS"]
    assert report["tvm_num_threads"] == str(report["cores"])
    assert report["threads"] == report["cores"]
    from forgeline.runtime.artifact_io import current_umask

    assert report["umask"] == current_umask()  # as inherited: the runtime changed nothing
    # A CPU build runs without importing the tvm package (runtime/backends/tvm_io.py), so an
    # `import tvm` after it gets the whole of TVM and a compile in the same process works.
    assert report["err"] == ""

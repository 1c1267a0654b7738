"""Cold start: a fresh process that imports the runtime, loads an artifact and runs it once.

``probe`` starts one such process and returns what it measured: wall seconds of the import, the
load and the first run, the CPU seconds of the whole process (on a shared machine the CPU time
moves far less than the wall time), and which heavy modules ended up imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

# What a cold start must not import: the compiler stack, torch, and for a CPU TVM build the tvm
# package itself and ml_dtypes (runtime/backends/tvm_io.py); onnxruntime only for backend="ort".
HEAVY = ("torch", "onnx", "onnxruntime", "tvm", "ml_dtypes", "onnxscript", "transformers")

_PROBE = textwrap.dedent("""
    import time
    started = time.perf_counter()
    import json, resource, sys
    import numpy as np
    import forgeline.runtime as rt
    imported = time.perf_counter()
    model = rt.load(sys.argv[1], backend=sys.argv[2])
    loaded = time.perf_counter()
    spec = model.inputs[0]
    shape = [1 if d == "batch" else 3 if isinstance(d, str) else d for d in spec.dims]
    model.run(**{spec.name: np.full(shape, 1, dtype=spec.dtype)})
    ran = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    heavy = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[3])})
    print(json.dumps({"import_s": imported - started, "load_s": loaded - imported, "run_s": ran - loaded,
                      "total_s": ran - started, "cpu_s": usage.ru_utime + usage.ru_stime, "heavy": heavy}))
""")


def probe(artifact: str | Path, backend: str = "tvm", timeout: float = 300, python: str | None = None,
          ) -> dict[str, Any]:
    """One fresh interpreter: import forgeline.runtime, load ``artifact`` on ``backend``, run once.

    The interpreter's own start-up (before the first import) is not counted, as it is the same
    for every backend. Environment variables that steer TVM's threads are left out so the
    runtime's own choices are what is measured. ``python``: another interpreter (e.g. another
    checkout's virtual environment) to compare with; this one by default.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "TVM_USE_RUNTIME_LIB")}
    # From a neutral folder: `python -c` puts the working directory first on sys.path, and a
    # checkout there would shadow the interpreter's own forgeline.
    done = subprocess.run([python or sys.executable, "-c", _PROBE, str(artifact), backend, json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tempfile.gettempdir())
    if done.returncode != 0:
        raise RuntimeError(f"cold-start probe failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])

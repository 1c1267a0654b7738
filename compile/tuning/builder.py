"""MetaSchedule's builder, runner and search, set up so that a trial costs what it should.

Out of the box a round of candidates costs ~30 s here however small it is (docs/tvm-notes.md, "Why
tuning is slow here"): every builder worker imports ``tvm.s_tir.tensor_intrin`` (~28 s, mostly
CUDA/ROCm/ARM/Hexagon intrinsics), and ``LocalBuilder`` starts a fresh worker pool each round so
that import is paid again and again, inside the 30 s build timeout. What this module changes:

- ``limit_tensor_intrinsics`` registers only this CPU's intrinsics in the tuning process, so the
  ``TuneContext`` import of the whole package is a no-op;
- ``PooledBuilder`` keeps its worker pool for the whole tuning job, and its build function never
  imports the intrinsics (fp32 LLVM schedules do not tensorize);
- ``make_runner`` measures with number=3, repeat=1, min_repeat_ms=20 and feeds integer inputs
  zeros, so an embedding gather never reads out of bounds on random indices;
- ``make_strategy`` searches with a population of 128 and 2 genetic rounds;
- ``WarmupDeferredXGB`` stops XGBoost from retraining after every round while its predictions
  are still ignored (they are random until 100 measurements exist): that training cost 10-20 s a
  round here, more than building and measuring.

Everything here is imported by the compile stage only (TVM's compiler is loaded on import).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.cost_model import PyCostModel
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

from ..tensor_intrinsics import load_tensor_intrinsics

logger = logging.getLogger(__name__)

# Which intrinsic modules a CPU of each architecture can use (the rest describe other targets).
_INTRINSICS_FOR_ARCH = {"x86_64": ("x86",), "aarch64": ("arm_cpu",), "riscv64": ("riscv_cpu",)}
MEASURE = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20)
_TRACKER_PROBE_S = 10.0  # one connection attempt to the RPC tracker before tuning


def limit_tensor_intrinsics(arch: str) -> bool:
    """Load only ``arch``'s tensor intrinsics; True when the full package was kept from loading.

    Later ``import tvm.s_tir.tensor_intrin`` statements (TuneContext has one) find the partial
    package in ``sys.modules`` and cost nothing. Call it before any tuning in the process.
    """
    return load_tensor_intrinsics(_INTRINSICS_FOR_ARCH.get(arch, ()))


def _warm_worker() -> None:
    """Pay the builder's imports once per worker, not once per candidate."""
    import tvm.driver  # noqa: F401
    import tvm.s_tir.transform  # noqa: F401
    import tvm.support.tar  # noqa: F401


def _build_candidate(mod, target, params) -> str:
    """Build one candidate and export it as a tar for the runner (runs in a worker)."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    from tvm.support.tar import tar

    if params is not None:
        raise ValueError("forgeline tunes modules with embedded weights; params must be None.")
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    artifact = os.path.join(tempfile.mkdtemp(prefix="forgeline-ms-"), "candidate." + tar.output_format)
    build(mod, target=target).export_library(artifact, fcompile=tar)
    return artifact


@derived_object
class PooledBuilder(PyBuilder):
    """A local builder whose worker pool lives for the whole tuning job; call ``shutdown``."""

    def __init__(self, *, max_workers: int, timeout_sec: float, build_fn=None) -> None:
        super().__init__()
        self.timeout_sec = timeout_sec
        self.build_fn = build_fn or _build_candidate  # (mod, target, params) -> artifact path
        self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_sec,
                                      initializer=_warm_worker)
        for _ in range(max_workers):  # start the workers now, while the tasks are being set up
            self.pool.submit(int)

    def build(self, build_inputs):
        jobs = [(b.mod, b.target, b.params) for b in build_inputs]
        results = []
        build_fn = self.build_fn
        for outcome in self.pool.map_with_error_catching(lambda job: build_fn(*job), jobs):
            if outcome.status == StatusKind.COMPLETE:
                results.append(BuilderResult(outcome.value, None))
            elif outcome.status == StatusKind.TIMEOUT:
                results.append(BuilderResult(None, f"build timed out after {self.timeout_sec} s"))
            else:
                results.append(BuilderResult(None, f"build failed: {outcome.value}"))
        return results

    def shutdown(self) -> None:
        self.pool.shutdown()


def _safe_arguments(device, args_info, alloc_repeat):
    """Inputs for one measurement: random floats, zero integers (valid indices for any table)."""
    import numpy as np
    import tvm

    rng = np.random.default_rng(0)
    repeated = []
    for _ in range(alloc_repeat):
        args = []
        for _kind, dtype, shape in args_info:
            if np.issubdtype(np.dtype(dtype), np.floating):
                data = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
            else:
                data = np.zeros(shape, dtype=dtype)
            args.append(tvm.runtime.tensor(data, device))
        repeated.append(args)
    return repeated


def _safe_arguments_rpc(session, device, args_info, alloc_repeat):
    del session  # tensors are created on the remote device directly
    return _safe_arguments(device, args_info, alloc_repeat)


def make_runner(*, timeout_sec: float, rpc: tuple[str, int, str] | None = None,
                max_workers: int = 1):
    """A local runner, or one that measures through an RPC tracker (host, port, key)."""
    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=timeout_sec, evaluator_config=MEASURE,
                                     f_alloc_argument=_safe_arguments)
    host, port, key = rpc
    _check_tracker(host, port, key)
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                 session_timeout_sec=int(timeout_sec))
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=MEASURE,
                               f_alloc_argument=_safe_arguments_rpc, max_workers=max_workers)


def _check_tracker(host: str, port: int, key: str) -> None:
    """Fail before tuning, with a sentence, when the tracker or its device key is not there."""
    from tvm import rpc

    from forgeline.runtime.errors import ConfigError

    try:
        # TVM's own connect retries a refused connection for 60 s before it raises.
        socket.create_connection((host, port), timeout=_TRACKER_PROBE_S).close()
        servers = str(rpc.connect_tracker(host, port).summary().get("server_info", ""))
    except Exception as exc:  # noqa: BLE001 - socket and TVM errors alike
        raise ConfigError(f"Cannot reach the RPC tracker at {host}:{port} ({exc}); start one with "
                          f"`python -m tvm.exec.rpc_tracker --host {host} --port {port}`.") from exc
    if key not in servers:
        raise ConfigError(f"The RPC tracker at {host}:{port} has no device server with key {key!r}; "
                          f"start one with `python -m tvm.exec.rpc_server --tracker {host}:{port} "
                          f"--key {key}`.")


def make_strategy():
    """Evolutionary search sized for trials that cost a quarter second, not thirty."""
    return ms.search_strategy.EvolutionarySearch(population_size=128, genetic_num_iters=2,
                                                 init_min_unmeasured=16)


@derived_object
class WarmupDeferredXGB(PyCostModel):
    """MetaSchedule's XGBoost cost model, trained once its predictions start to count.

    ``XGBModel.predict`` answers with random scores until it holds ``warmup`` measurements, yet
    its ``update`` retrains after every round before that. This keeps the rounds until there
    are ``warmup`` measurements, then hands them all over with one training at the end.
    """

    def __init__(self, *, num_tuning_cores: int, warmup: int = 100) -> None:
        super().__init__()
        self.model = ms.cost_model.XGBModel(num_tuning_cores=num_tuning_cores,
                                            num_warmup_samples=warmup)
        self.warmup = warmup
        self.pending: list | None = []  # held-back rounds; None once handed over
        self.measured = 0

    def load(self, path: str) -> None:
        self.model.load(path)

    def save(self, path: str) -> None:
        self.model.save(path)

    def update(self, context, candidates, results) -> None:
        if self.pending is None:
            self.model.update(context, candidates, results)
            return
        self.pending.append((context, candidates, results))
        self.measured += len(results)
        if self.measured < self.warmup:
            return
        rounds, self.pending = self.pending, None
        inner = getattr(self.model, "_inst", self.model)  # the Python object XGBModel's code sees
        for index, args in enumerate(rounds):
            # XGBModel skips retraining while its data grew < 20 % since the last training; a
            # huge last size skips it for every round but the final one.
            inner.last_train_size = 0 if index == len(rounds) - 1 else 1 << 62
            self.model.update(*args)

    def predict(self, context, candidates):
        return self.model.predict(context, candidates)  # random until warm, as XGBModel does


__all__ = ["MEASURE", "PooledBuilder", "WarmupDeferredXGB", "limit_tensor_intrinsics", "make_runner",
           "make_strategy"]

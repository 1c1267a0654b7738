"""`bench_artifact`: latency and throughput of one artifact on several backends, side by side.

All backends run in this one process on the same inputs, interleaved in rounds, so they see the
same machine state; on a shared, noisy machine read the medians and the ratios, not single
numbers.
Backends:

- ``eager``: PyTorch on the artifact's weights.safetensors (torch threads = physical cores);
- ``ort``: ONNX Runtime's CPU provider on model.onnx, through ``forgeline.runtime.load``;
- ``tvm``: the artifact's dynamic-shape TVM build for this host (untuned);
- ``tvm-tuned``: the tuned shape-bucket build for exactly (batch, seq), when the artifact has one
  (``BuildRecord.buckets["BxT"]["lib"]``); otherwise reported as not available;
- ``tvm-bf16`` / ``tvm-int8``: the artifact's ``--precision`` build, where this host can run it;
- ``openvino`` / ``openvino-f32``: OpenVINO's CPU plugin at its default precision (bf16 on CPUs
  with AVX512-BF16 or AMX) and at fp32, on model.onnx (peers.py; ``pip install forgeline[peers]``);
- ``ort-int8``: ONNX Runtime on model.onnx after ``quantize_dynamic`` (int8 weights).

Each backend's top-1 agreement with eager fp32 on the same inputs is reported beside its latency
(agreement.py), where torch is installed.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from forgeline.runtime import progress
from forgeline.runtime.errors import ConfigError, ForgelineError
from forgeline.runtime.format import Manifest

from .agreement import eager_reference, top1_agreements
from .backends import RUNNERS
from .workload import bench_inputs, estimate_flops

log = logging.getLogger(__name__)

BACKENDS = ("eager", "ort", "tvm", "tvm-tuned", "tvm-bf16", "tvm-int8", "openvino", "openvino-f32", "ort-int8")
REFERENCE_BACKEND = "ort"  # every ratio is latency / ONNX Runtime's latency


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """What to run and how long; logged once before the runs start."""

    backends: tuple[str, ...] = ("eager", "ort", "tvm", "tvm-tuned")
    batch: int = 1
    seq: int = 128
    warmup: int = 5  # untimed runs first: allocations, thread pools, caches
    iters: int = 30  # timed runs; p50 and p90 come from these
    seed: int = 0  # for the random inputs

    def validate(self) -> None:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise ConfigError(f"unknown backend(s) {unknown or '(none given)'}; choose from "
                              f"{', '.join(BACKENDS)}.")
        for name in ("batch", "seq", "iters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1.")
        if self.warmup < 0:
            raise ConfigError(f"warmup={self.warmup} must be 0 or more.")


@dataclass
class BackendResult:
    """One backend's timings; ``available`` is False (with ``note`` saying why) when not run."""

    backend: str
    available: bool
    note: str = ""
    p50_ms: float | None = None
    p90_ms: float | None = None
    mean_ms: float | None = None
    tokens_per_s: float | None = None  # batch * seq / p50
    gflops_per_s: float | None = None  # estimated forward FLOPs / p50
    vs_ort: float | None = None  # p50 / ONNX Runtime's p50 (lower is faster)
    top1_agreement: float | None = None  # share of positions whose argmax equals eager fp32's
    samples_ms: list[float] = field(default_factory=list)


@dataclass
class BenchReport:
    artifact: str
    model: str
    preset: str
    batch: int
    seq: int
    flops: float | None  # estimated FLOPs of one forward pass at (batch, seq)
    host: dict[str, Any]
    date: str
    results: list[BackendResult]

    def result(self, backend: str) -> BackendResult | None:
        return next((r for r in self.results if r.backend == backend), None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def host_info() -> dict[str, Any]:
    """CPU model, physical cores and Python platform: the machine a number was measured on."""
    from forgeline.runtime.host import cpu_core_count

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": cpu_core_count(), "platform": platform.platform()}


def bench_artifact(path: str | Path, options: BenchOptions = BenchOptions()) -> BenchReport:
    """Time every backend in ``options`` on the artifact at ``path``; see the module doc."""
    options.validate()
    root = Path(path)
    manifest = Manifest.load(root)
    manifest.verify_files(root)
    log.info("bench %s: %s", root, options)
    inputs = bench_inputs(manifest, options)
    flops = estimate_flops(manifest.config, options.batch, options.seq)
    runners, results = {}, {}
    for index, backend in enumerate(options.backends, 1):
        log.info("bench [%d/%d] loading %s", index, len(options.backends), backend)
        try:
            with progress.stage(f"load {backend}"):
                runners[backend] = RUNNERS[backend](root, manifest, inputs, options)
        except ForgelineError as exc:
            log.info("%s not run: %s", backend, exc)
            results[backend] = BackendResult(backend, False, note=str(exc))
    reference = eager_reference(runners, lambda: RUNNERS["eager"](root, manifest, inputs, options))
    agreement = top1_agreements(runners, manifest, reference)
    samples = interleaved_samples(runners, iters=options.iters, warmup=options.warmup)
    for backend, times in samples.items():
        results[backend] = summarize_samples(backend, times, options, flops)
        results[backend].top1_agreement = agreement.get(backend)
    results = [results[b] for b in options.backends]
    add_ratios(results)
    return BenchReport(artifact=str(root), model=manifest.name, preset=manifest.preset,
                       batch=options.batch, seq=options.seq, flops=flops, host=host_info(),
                       date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       results=results)


_BLOCK = 5  # timed runs per backend per round
# A runtime's thread pool spins after a run before its workers sleep, measured on a 2-core
# host: ONNX Runtime's for ~45 ms, TVM's for ~200 ms (TVM_THREAD_POOL_SPIN_COUNT). A backend timed
# while another's worker still spins shares a core with it: a 128x256x1024 GEMM on TVM ran 10x
# slower right after ONNX Runtime's, and ORT ~13% slower after TVM's. Each block therefore waits
# until the process is idle.
_SETTLE_WINDOW_S = 0.01
_SETTLE_TIMEOUT_S = 1.0
_IDLE_CORES = 0.1  # busy cores below which the process counts as idle


def wait_until_idle(timeout_s: float = _SETTLE_TIMEOUT_S) -> bool:
    """Sleep in short windows until this process uses under ``_IDLE_CORES`` of CPU; False when
    it is still busy after ``timeout_s`` (a thread that never sleeps)."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(_SETTLE_WINDOW_S)
        if time.process_time() - cpu < _IDLE_CORES * (time.perf_counter() - wall):
            return True
    return False


def interleaved_samples(runners: dict[str, Callable[[], Any]], *, iters: int,
                        warmup: int) -> dict[str, list[float]]:
    """ms per run of each runner: rounds of a few runs per runner.

    On a shared machine the load changes from second to second; rounds give every backend the
    same mix of quiet and busy moments, so the ratios stay fair. Each block of runs starts once
    the previous backend's thread pool has stopped spinning (``wait_until_idle``), then runs once
    untimed (waking its own pool, warming caches) before the timed runs.
    """
    rounds = -(-iters // _BLOCK)
    with progress.stage(f"time {', '.join(runners)}", total=rounds, unit="rounds") as bar:
        for runner in runners.values():
            for _ in range(warmup):
                runner()
        return _timed_rounds(runners, iters, rounds, bar)


def _timed_rounds(runners: dict[str, Callable[[], Any]], iters: int, rounds: int,
                  bar: progress.Task) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for index in range(rounds):
        for name, runner in runners.items():
            if not wait_until_idle():
                log.warning("bench: the process stayed busy before %s's runs; its times may "
                            "include another backend's spinning threads", name)
            runner()
            for _ in range(min(_BLOCK, iters - len(samples[name]))):
                started = time.perf_counter()
                runner()
                samples[name].append((time.perf_counter() - started) * 1e3)
        log.info("bench: round %d/%d", index + 1, rounds)
        bar.advance()
    return samples


def summarize_samples(backend: str, samples: list[float], options: BenchOptions,
               flops: float | None) -> BackendResult:
    p50, p90 = (float(np.percentile(samples, q)) for q in (50, 90))
    tokens = options.batch * options.seq
    log.info("%s: p50 %.2f ms, p90 %.2f ms", backend, p50, p90)
    return BackendResult(backend, True, p50_ms=p50, p90_ms=p90, mean_ms=float(np.mean(samples)),
                         tokens_per_s=tokens / (p50 / 1e3),
                         gflops_per_s=flops / (p50 / 1e3) / 1e9 if flops else None,
                         samples_ms=[round(s, 4) for s in samples])


def add_ratios(results: list[BackendResult]) -> None:
    ref = next((r for r in results if r.backend == REFERENCE_BACKEND and r.available), None)
    for r in results:
        if ref is not None and r.available:
            r.vs_ort = r.p50_ms / ref.p50_ms

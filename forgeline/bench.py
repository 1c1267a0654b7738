"""`bench_artifact`: latency and throughput of one artifact on several backends, side by side.

All backends run in this one process on the same inputs, interleaved in rounds, so they see the
same machine state; on a shared, noisy machine read the medians and the ratios, not single
numbers.
Backends:

- ``eager``: PyTorch on the artifact's weights.safetensors (torch threads = physical cores);
- ``ort``: ONNX Runtime's CPU provider on model.onnx, through ``forgeline.runtime.load``;
- ``tvm``: the artifact's dynamic-shape TVM build for this host (untuned);
- ``tvm-tuned``: the tuned shape-bucket build for exactly (batch, seq), when the artifact has one
  (``BuildRecord.buckets["BxT"]["lib"]``); otherwise reported as not available.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from forgeline.runtime.errors import ConfigError, ForgelineError
from forgeline.runtime.format import Manifest, TensorSpec

log = logging.getLogger(__name__)

BACKENDS = ("eager", "ort", "tvm", "tvm-tuned")
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
    inputs = make_inputs(manifest.inputs, manifest.dim_limits, options)
    flops = estimate_flops(manifest.config, options.batch, options.seq)
    runners, results = {}, {}
    for index, backend in enumerate(options.backends, 1):
        log.info("bench [%d/%d] loading %s", index, len(options.backends), backend)
        try:
            runners[backend] = _RUNNERS[backend](root, manifest, inputs, options)
        except ForgelineError as exc:
            log.info("%s not run: %s", backend, exc)
            results[backend] = BackendResult(backend, False, note=str(exc))
    samples = _interleaved_samples(runners, options)
    for backend, times in samples.items():
        results[backend] = _summarize(backend, times, options, flops)
    results = [results[b] for b in options.backends]
    _add_ratios(results)
    return BenchReport(artifact=str(root), model=manifest.name, preset=manifest.preset,
                       batch=options.batch, seq=options.seq, flops=flops, host=host_info(),
                       date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       results=results)


_BLOCK = 5  # timed runs per backend per round


def _interleaved_samples(runners: dict[str, Callable[[], Any]],
                         options: BenchOptions) -> dict[str, list[float]]:
    """Rounds of a few runs per backend, each round's first run of a backend untimed.

    On a shared machine the load changes from second to second; rounds give every backend the
    same mix of quiet and busy moments, so the ratios stay fair. Runs stay in blocks, after an
    untimed one, because ONNX Runtime's, PyTorch's and TVM's thread pools spin for a while
    after a run and would slow whichever backend ran next.
    """
    for runner in runners.values():
        for _ in range(options.warmup):
            runner()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    rounds = -(-options.iters // _BLOCK)
    for index in range(rounds):
        for name, runner in runners.items():
            runner()  # untimed: lets the previous backend's spinning threads go idle
            for _ in range(min(_BLOCK, options.iters - len(samples[name]))):
                started = time.perf_counter()
                runner()
                samples[name].append((time.perf_counter() - started) * 1e3)
        log.info("bench: round %d/%d", index + 1, rounds)
    return samples


def _summarize(backend: str, samples: list[float], options: BenchOptions,
               flops: float | None) -> BackendResult:
    p50, p90 = (float(np.percentile(samples, q)) for q in (50, 90))
    tokens = options.batch * options.seq
    log.info("%s: p50 %.2f ms, p90 %.2f ms", backend, p50, p90)
    return BackendResult(backend, True, p50_ms=p50, p90_ms=p90, mean_ms=float(np.mean(samples)),
                         tokens_per_s=tokens / (p50 / 1e3),
                         gflops_per_s=flops / (p50 / 1e3) / 1e9 if flops else None,
                         samples_ms=[round(s, 4) for s in samples])


def _add_ratios(results: list[BackendResult]) -> None:
    ref = next((r for r in results if r.backend == REFERENCE_BACKEND and r.available), None)
    for r in results:
        if ref is not None and r.available:
            r.vs_ort = r.p50_ms / ref.p50_ms


def make_inputs(specs: list[TensorSpec], limits: dict[str, int | None],
                options: BenchOptions) -> dict[str, np.ndarray]:
    """Random inputs at (batch, seq): ids in their value range, masks all ones, floats normal."""
    rng = np.random.default_rng(options.seed)
    arrays = {}
    for spec in specs:
        shape = tuple(_dim_size(d, limits, options) for d in spec.dims)
        if "mask" in spec.name:
            arrays[spec.name] = np.ones(shape, dtype=spec.dtype)  # every token real
        elif np.issubdtype(np.dtype(spec.dtype), np.integer):
            lo, hi = spec.value_range or (0, 2)
            arrays[spec.name] = rng.integers(lo, hi, size=shape).astype(spec.dtype)
        else:
            arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return arrays


def _dim_size(dim: str | int, limits: dict[str, int | None], options: BenchOptions) -> int:
    if isinstance(dim, int):
        return dim
    size = options.batch if dim == "batch" else options.seq  # every other symbolic dim is a length
    limit = limits.get(dim)
    if limit is not None and size > limit:
        raise ConfigError(f"{dim}={size} exceeds the artifact's limit of {limit}; bench a "
                          "smaller --batch/--seq.")
    return size


def estimate_flops(config: dict[str, Any], batch: int, seq: int) -> float | None:
    """Multiply-add FLOPs of one forward pass (2 per MAC), from the model config.

    Counts the matmuls, which are all but a few percent of the work: per layer the four
    attention projections (4 d^2), the two attention products (2 T d) and the FFN (2 d f), MoE
    layers running their experts on their slots only (``_expert_rows_per_token`` * 2 d f + d E),
    and the output head (d V). None for families it does not know (the encoder-decoder
    Transformer).
    """
    family = config.get("family")
    if family not in ("gpt", "bert"):
        return None
    d, f, v, layers = config["d_model"], config["d_ff"], config["vocab_size"], config["n_layers"]
    moe = config.get("router", "none") != "none"
    every, experts = config.get("moe_every", 1), config.get("n_experts", 1)
    macs_per_token = 0.0
    for layer in range(layers):
        is_moe = moe and (layer + 1) % every == 0
        ffn = _expert_rows_per_token(config, batch, seq) * 2 * d * f + d * experts if is_moe else 2 * d * f
        macs_per_token += 4 * d * d + 2 * seq * d + ffn
    macs_per_token += d * v + (d * d if family == "bert" else 0)  # head (+ BERT's MLM transform)
    return 2.0 * macs_per_token * batch * seq


def _expert_rows_per_token(config: dict[str, Any], batch: int, seq: int) -> float:
    """Expert FFN rows an MoE layer computes per token: E slot lists of min(n, ceil(n * r)) slots
    per group of n tokens (a sequence; for GPT one position across the batch), r = picks * c / E."""
    experts = config.get("n_experts", 1)
    picks = config.get("router_top_k", 1) if config.get("router") == "token_choice" else 1
    n = batch if config.get("family") == "gpt" else seq
    slots = min(n, math.ceil(n * picks * config.get("capacity_factor", 2.0) / experts - 1e-9))
    return experts * slots / n


# ------------------------------------------------------------------------------ kernel profile


@dataclass
class KernelTime:
    """Time spent in one function the VM calls (a PrimFunc, a packed host kernel, a VM builtin)."""

    name: str
    calls: int  # per forward pass
    ms: float  # per forward pass, all calls together
    share: float  # of the summed time of every call


def profile_tvm_kernels(path: str | Path, options: BenchOptions = BenchOptions(),
                        lib: str | None = None) -> list[KernelTime]:
    """Per-kernel time of the artifact's TVM CPU build (or ``lib``, relative to the artifact).

    Uses the VM's instrument hook, which runs before and after every call instruction, so each
    PrimFunc, each ``forgeline.cpu.matmul`` call and each VM builtin is timed as it runs in the
    real model; the hook itself adds a few microseconds per call. Sorted, slowest first.
    """
    from forgeline.runtime.cpu_kernels import register_cpu_kernels
    from forgeline.runtime.model import select_build
    from forgeline.runtime.tvm_executor import import_tvm_runtime

    root = Path(path)
    manifest = Manifest.load(root)
    tvm = import_tvm_runtime()
    register_cpu_kernels()
    lib_path = root / (lib or select_build(manifest, "cpu").lib)
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(lib_path)), tvm.cpu(0))
    inputs = make_inputs(manifest.inputs, manifest.dim_limits, options)
    args = [tvm.runtime.tensor(inputs[name]) for name in manifest.input_names()]
    main = vm["main"]
    for _ in range(max(1, options.warmup)):
        main(*args)
    totals: dict[str, float] = {}
    calls: dict[str, int] = {}
    started: dict[str, float] = {}

    def instrument(func, symbol, before_run, ret_value, *call_args):
        now = time.perf_counter()
        if before_run:
            started[symbol] = now
        else:
            totals[symbol] = totals.get(symbol, 0.0) + now - started.pop(symbol, now)
            calls[symbol] = calls.get(symbol, 0) + 1
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    vm.set_instrument(instrument)
    for _ in range(options.iters):
        main(*args)
    whole = sum(totals.values()) or 1.0
    rows = [KernelTime(name, calls[name] // options.iters, t / options.iters * 1e3, t / whole)
            for name, t in totals.items()]
    return sorted(rows, key=lambda r: -r.ms)


# ------------------------------------------------------------------------------------ runners


def _run_ort(root: Path, manifest: Manifest, inputs, options) -> Callable[[], Any]:
    from forgeline.runtime import load

    model = load(root, backend="ort")
    return lambda: model.run(**inputs)


def _run_tvm(root: Path, manifest: Manifest, inputs, options) -> Callable[[], Any]:
    from forgeline.runtime.model import select_build

    build = select_build(manifest, "cpu")
    return _executor_runner(root / build.lib, manifest, inputs)


def _run_tvm_tuned(root: Path, manifest: Manifest, inputs, options) -> Callable[[], Any]:
    from forgeline.runtime.model import select_build

    build = select_build(manifest, "cpu")
    key = f"{options.batch}x{options.seq}"
    bucket = (getattr(build, "buckets", None) or {}).get(key)
    if not bucket:
        raise ConfigError(f"no tuned build for {key} in {build.tag}; tune that bucket first.")
    return _executor_runner(root / bucket["lib"], manifest, inputs)


def _executor_runner(lib: Path, manifest: Manifest, inputs) -> Callable[[], Any]:
    # The executor directly, not load(): load() may dispatch to a tuned bucket for this shape,
    # and "tvm" must time the untuned dynamic build it names.
    from forgeline.runtime.tvm_executor import TvmExecutor

    executor = TvmExecutor(lib, device="cpu")
    ordered = [inputs[name] for name in manifest.input_names()]
    return lambda: executor.run(ordered)


def _run_eager(root: Path, manifest: Manifest, inputs, options) -> Callable[[], Any]:
    from forgeline.runtime.errors import MissingDependencyError
    from forgeline.runtime.format import WEIGHTS_FILE
    from forgeline.runtime.host import cpu_core_count

    try:
        import torch

        from forgeline.define import load_checkpoint
        from forgeline.export.eager import run_eager
    except ImportError as exc:
        raise MissingDependencyError(f"the eager backend needs torch ({exc.name} is missing); "
                                     "install torch or leave eager out of --backends.") from exc
    torch.set_num_threads(cpu_core_count())
    model = load_checkpoint(root / WEIGHTS_FILE).eval()
    return lambda: run_eager(model, inputs)


_RUNNERS = {"eager": _run_eager, "ort": _run_ort, "tvm": _run_tvm, "tvm-tuned": _run_tvm_tuned}


__all__ = ["BACKENDS", "BackendResult", "BenchOptions", "BenchReport", "KernelTime",
           "bench_artifact", "estimate_flops", "host_info", "make_inputs", "profile_tvm_kernels"]

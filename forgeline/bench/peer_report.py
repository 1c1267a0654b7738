"""`bench_peers`: an artifact's model.onnx on the runtimes users already have, beside forgeline.

Every backend runs in this one process on the same inputs, interleaved in rounds
(``timing.interleaved_samples``), and each one's outputs are checked against eager PyTorch run
from the artifact's weights.safetensors: max abs diff, the fp32 tolerance (runtime/format.py),
and top-1 agreement of the first output (the logits). Accuracy is measured on the timed inputs
and ``heldout`` more random inputs of the same shape (other seeds): at 1x128 the timed inputs
alone are 128 positions, where one near-tie moves top-1 by 0.8%. Ratios are p50 / ONNX
Runtime's p50 and p50 / OpenVINO f32's p50 (lower is faster). A peer that is not installed is
reported as such.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from forgeline.runtime.errors import ForgelineError
from forgeline.runtime.format import Manifest
from forgeline.runtime.parity import compare_outputs

from .peer_runners import PeerUnavailable, iree_runner, openvino_runner, ort_int8_runner, ort_runner, tvm_runner
from .timing import host_info, interleaved_samples
from .workload import bench_inputs

log = logging.getLogger(__name__)

# name -> loader; reduced-precision TVM builds the manifest lists are added as "tvm-<precision>".
PEER_LOADERS = {
    "ort": ort_runner,
    "ort-int8": ort_int8_runner,  # quantize_dynamic: int8 weights, activations per call
    "openvino-f32": openvino_runner("f32"),
    "openvino": openvino_runner(None),  # its default precision: bf16 on CPUs with native bf16
    "iree": iree_runner,
    "tvm": tvm_runner("dynamic"),
    "tvm-tuned": tvm_runner("bucket"),
}
REFERENCES = {"vs_ort": "ort", "vs_openvino_f32": "openvino-f32"}


@dataclass(frozen=True, kw_only=True)
class PeerOptions:
    """What to run and how long; logged once before the runs start."""

    backends: tuple[str, ...] = tuple(PEER_LOADERS)  # + "tvm-<precision>" builds, found per artifact
    batch: int = 1
    seq: int = 128
    warmup: int = 3  # untimed runs first
    iters: int = 20  # timed runs per backend
    seed: int = 0
    heldout: int = 7  # input sets of the same shape (seeds seed+1...) scored beside the timed one


@dataclass
class PeerResult:
    backend: str
    available: bool
    note: str = ""  # why it did not run, or what precision it ran in
    p50_ms: float | None = None
    p90_ms: float | None = None
    vs_ort: float | None = None  # p50 / ONNX Runtime's p50
    vs_openvino_f32: float | None = None  # p50 / OpenVINO f32's p50
    max_abs_diff: float | None = None  # vs eager PyTorch, over the float outputs
    within_tolerance: bool | None = None  # every output within the artifact's fp32 tolerance
    top1_agreement: float | None = None  # share of positions whose argmax equals eager's
    positions: int = 0  # positions top-1 was scored on, over the timed and held-out inputs
    samples_ms: list[float] = field(default_factory=list)


@dataclass
class PeerReport:
    artifact: str
    model: str
    preset: str
    batch: int
    seq: int
    host: dict[str, Any]
    date: str
    versions: dict[str, str]
    results: list[PeerResult]

    def result(self, backend: str) -> PeerResult | None:
        return next((r for r in self.results if r.backend == backend), None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def reduced_precision_builds(manifest: Manifest) -> dict[str, str]:
    """"tvm-<precision>" -> build tag for every build whose record names a precision other than
    fp32 (a ``precision`` field on builds; manifests without it have none); a build with a forced
    kernel in its tag ("cpu-x-bf16-avx512bf16") is "tvm-bf16-avx512bf16". Emulated builds (tags
    ending in "emu") are for checking, not timing."""
    found = {}
    for tag, build in manifest.builds.items():
        precision = getattr(build, "precision", None) or "fp32"
        if precision not in ("fp32", "float32") and not build.codegen_only and not tag.endswith("emu"):
            kernel = tag.partition(f"-{precision}")[2]  # "" or "-<kernel>"
            found[f"tvm-{precision}{kernel}"] = tag
    return found


def bench_peers(path: str | Path, options: PeerOptions, eager_outputs: dict[str, np.ndarray] | None = None,
                ) -> PeerReport:
    """Time and check every backend in ``options`` (plus reduced-precision builds) on one shape."""
    root = Path(path)
    manifest = Manifest.load(root)
    manifest.verify_files(root)
    log.info("peers %s: %s", root, options)
    inputs = bench_inputs(manifest, options)
    expected = eager_outputs if eager_outputs is not None else eager_reference(root, inputs)
    loaders = {b: PEER_LOADERS[b] for b in options.backends if b in PEER_LOADERS}
    loaders.update({name: tvm_runner(tag) for name, tag in reduced_precision_builds(manifest).items()})
    with tempfile.TemporaryDirectory(prefix="forgeline-peers-") as work:
        runners, results = _load_all(root, manifest, inputs, loaders, Path(work))
        for name, runner in runners.items():
            results[name] = _checked(name, runner(), expected, manifest)
        samples = interleaved_samples(runners, iters=options.iters, warmup=options.warmup)
        _score_heldout(root, manifest, options, runners, results)
    for name, times in samples.items():
        r = results[name]
        r.p50_ms, r.p90_ms = (float(np.percentile(times, q)) for q in (50, 90))
        r.samples_ms = [round(t, 4) for t in times]
    ordered = [results[b] for b in loaders]
    _add_ratios(ordered)
    return PeerReport(artifact=str(root), model=manifest.name, preset=manifest.preset, batch=options.batch,
                      seq=options.seq, host=host_info(), versions=peer_versions(),
                      date=datetime.now(timezone.utc).isoformat(timespec="seconds"), results=ordered)


def _load_all(root, manifest, inputs, loaders, work: Path):
    runners, results = {}, {}
    for index, (name, loader) in enumerate(loaders.items(), 1):
        log.info("peers [%d/%d] loading %s", index, len(loaders), name)
        try:
            runners[name] = loader(root, manifest, inputs, work)
        except (PeerUnavailable, ForgelineError) as exc:
            log.info("%s not run: %s", name, exc)
            results[name] = PeerResult(name, False, note=str(exc))
        except Exception as exc:  # noqa: BLE001 - a peer's own failure is a row, not a crash
            log.warning("%s failed to load: %s", name, exc)
            results[name] = PeerResult(name, False, note=f"failed: {type(exc).__name__}: {str(exc)[:200]}")
    return runners, results


def eager_reference(root: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Eager PyTorch's outputs on ``inputs``, from the artifact's own weights.safetensors."""
    from .backends import RUNNERS

    return RUNNERS["eager"](root, None, inputs, None)()


def _checked(name: str, outputs: list[np.ndarray], expected: dict[str, np.ndarray],
             manifest: Manifest) -> PeerResult:
    actual = dict(zip(manifest.output_names(), outputs))
    rows = compare_outputs(expected, actual, manifest.tolerance, "peers")
    floats = [r.max_abs for r in rows if not r.exact]
    first = manifest.output_names()[0]
    want, got = expected[first], actual.get(first)
    top1, positions = None, 0
    if got is not None and got.shape == want.shape:
        agree = np.argmax(got, -1) == np.argmax(want, -1)
        top1, positions = float(np.mean(agree)), int(agree.size)
    return PeerResult(name, True, max_abs_diff=max(floats) if floats else None,
                      within_tolerance=all(r.passed for r in rows), top1_agreement=top1, positions=positions)


def _score_heldout(root: Path, manifest: Manifest, options: PeerOptions, runners: dict,
                   results: dict[str, PeerResult]) -> None:
    """Fold ``options.heldout`` more input sets into each result's max abs diff and top-1."""
    for offset in range(1, options.heldout + 1):
        feed = bench_inputs(manifest, dataclasses.replace(options, seed=options.seed + offset))
        expected = eager_reference(root, feed)
        for name, runner in runners.items():
            more, result = _checked(name, runner(feed), expected, manifest), results[name]
            if more.max_abs_diff is not None:
                result.max_abs_diff = max(result.max_abs_diff or 0.0, more.max_abs_diff)
            result.within_tolerance = bool(result.within_tolerance and more.within_tolerance)
            if more.top1_agreement is not None and result.top1_agreement is not None:
                seen = result.positions + more.positions
                result.top1_agreement = (result.top1_agreement * result.positions
                                         + more.top1_agreement * more.positions) / seen
                result.positions = seen


def _add_ratios(results: list[PeerResult]) -> None:
    for attr, ref_name in REFERENCES.items():
        ref = next((r for r in results if r.backend == ref_name and r.available), None)
        for r in results:
            if ref is not None and r.available:
                setattr(r, attr, r.p50_ms / ref.p50_ms)


def peer_versions() -> dict[str, str]:
    """Installed versions of the peer runtimes (and TVM), for the report."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("onnxruntime", "onnxruntime-gpu", "openvino", "iree-base-compiler", "apache-tvm"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


# (forgeline backend, the peer it is held against): the reduced-precision targets of
# docs/benchmarks.md compare these
AIM_PAIRS = (("tvm-bf16", "openvino"), ("tvm-int8", "ort-int8"))


def repeated_ratios(reports: list[PeerReport], pairs=AIM_PAIRS) -> list[dict[str, Any]]:
    """For each shape and pair, the ratio p50(ours) / p50(peer) of every run (each from one
    interleaved run) and their median: on a shared machine one run's batch-1 ratio moves by
    more than the difference an aim asks about, and the median of runs does not."""
    rows = []
    shapes = dict.fromkeys((r.batch, r.seq) for r in reports)
    for batch, seq in shapes:
        runs = [r for r in reports if (r.batch, r.seq) == (batch, seq)]
        for ours, peer in pairs:
            ratios = [a.p50_ms / b.p50_ms for a, b in ((r.result(ours), r.result(peer)) for r in runs)
                      if a is not None and b is not None and a.available and b.available]
            if ratios:
                rows.append({"shape": f"{batch}x{seq}", "backend": ours, "peer": peer, "ratios": ratios,
                             "median": float(np.median(ratios))})
    return rows


def repeated_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| shape | backend | against | ratio per run | median |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['shape']} | {row['backend']} | {row['peer']} | "
                     f"{', '.join(f'{v:.2f}' for v in row['ratios'])} | {row['median']:.2f} |")
    return "\n".join(lines)


def markdown_table(reports: list[PeerReport]) -> str:
    """One row per (shape, backend): p50 ms, ratios, and the check against eager."""
    lines = ["| model | shape | backend | p50 ms | vs ORT | vs OpenVINO f32 | max abs diff | top-1 | fp32 tol |",
             "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    for report in reports:
        shape = f"{report.batch}x{report.seq}"
        for r in report.results:
            if not r.available:
                lines.append(f"| {report.model}-{report.preset} | {shape} | {r.backend} | {r.note} | | | | | |")
                continue
            tol = "pass" if r.within_tolerance else "fail"
            lines.append(f"| {report.model}-{report.preset} | {shape} | {r.backend} | {r.p50_ms:.2f} | "
                         f"{fmt(r.vs_ort, '.2f')} | {fmt(r.vs_openvino_f32, '.2f')} | "
                         f"{fmt(r.max_abs_diff, '.1e')} | {fmt(r.top1_agreement, '.3f')} | {tol} |")
    scored = {f"{report.batch}x{report.seq}": max((r.positions for r in report.results), default=0)
              for report in reports}
    lines.append("\nmax abs diff and top-1 against eager fp32 over the timed inputs and held-out ones: "
                 + ", ".join(f"{shape} {n} positions" for shape, n in scored.items()) + ".")
    return "\n".join(lines)

"""`load` an artifact and run it: the light runtime's front door.

Imports numpy and, on demand, the TVM runtime or onnxruntime. Never torch, onnx or the TVM
compiler: an application that embeds the runtime pays only for what it runs.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from .amx import needs_amx, request_amx_permission
from .artifact_io import artifact_lock
from .confine import check_confinement, confined
from .errors import ArtifactError, ConfigError, TargetMismatchError
from .format import (GOLDEN_FILE, ONNX_FILE, ORT_STAGE, BuildRecord, Manifest, StageRecord,
                     TensorSpec, Tolerance, routing_flip_bound)
from .golden import GoldenCase, load_golden
from .limits import check_position_limits
from .memory import release_freed_memory
from .parity import compare_outputs, stage_record
from .validate import complete_dim_limits, validate_inputs

log = logging.getLogger(__name__)

BACKENDS = ("tvm", "ort")


class Executor(Protocol):
    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]: ...


class Model:
    """A loaded artifact bound to one backend (and, for TVM, one build).

    Safe to use from several threads at once (each backend serialises or separates what must be).
    ``close()``, or ``with load(...) as model:``, releases the libraries and their memory;
    ``release()`` frees them too but lets the model open them again on its next call.
    """

    def __init__(self, path: Path, manifest: Manifest, backend: str, executor: Executor, build: BuildRecord | None,
                 device_id: int = 0, reopen: Callable[[], Executor] | None = None):
        self.path = path
        self.device_id = device_id  # the CUDA device of a CUDA build (its graphs open there too)
        self.manifest = manifest
        self.backend = backend
        self.build = build
        self._executor = executor
        self._reopen = reopen  # makes the main executor again after ``release``
        self._released = False
        self._graphs: dict[str, Executor] = {}  # extra graphs (manifest.graphs), opened on first use
        self._tokenizer = None
        self._open_lock = threading.Lock()  # two threads' first run_graph must not open a graph twice

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release every executor (TVM libraries and VMs, ORT sessions); the model cannot run after."""
        with self._open_lock:
            self._close_executors()
            self._tokenizer, self._reopen, self._released = None, None, False

    def release(self) -> None:
        """Close every executor now, to free its memory; the next call opens the one it needs again.

        A check runs the main graph and each generation graph in turn with ``release()`` between
        them, so that only one ONNX Runtime session (each holds its own copy of the weights) is alive
        at a time. The freed memory goes back to the system (memory.py), not to malloc's heap, so
        the next graph's session does not count on top of it.
        """
        with self._open_lock:
            if self._reopen is None:
                return  # closed (or made without a way to reopen): nothing to release
            self._close_executors()
            self._released = True
        release_freed_memory()

    def _close_executors(self) -> None:
        for executor in [self._executor, *self._graphs.values()]:
            close = getattr(executor, "close", None)
            if close is not None:
                close()
        self._executor, self._graphs = None, {}

    def _live(self) -> Executor:
        if self._executor is None and self._released:
            self._executor, self._released = self._reopen(), False
        if self._executor is None:
            raise ArtifactError(f"{self!r} was closed; load the artifact again to run it.")
        return self._executor

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self.manifest.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self.manifest.outputs)

    @property
    def last_build(self) -> str | None:
        """Which library served the last run: "dynamic", a bucket key ("1x128"), or None (ORT)."""
        return getattr(self._executor, "last_build", "dynamic" if self.build is not None else None)

    @property
    def tolerance(self) -> Tolerance:
        """What parity holds this backend to: the build's precision tolerance, else the manifest's."""
        own = self.build.parity_tolerance if self.build is not None else None
        return own or self.manifest.tolerance

    @property
    def reduced_precision(self) -> bool:
        return self.build is not None and self.build.precision != "fp32"

    @property
    def routing_flip_bound(self) -> float | None:
        """The share of routing decisions this build may flip (reduced precision), else None."""
        return routing_flip_bound(self.build.precision) if self.reduced_precision else None

    @property
    def stage(self) -> str:
        return ORT_STAGE if self.build is None else f"tvm/{self.build.tag}"

    def run(self, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        """Validate the inputs, run the backend, and name the outputs."""
        ordered = validate_inputs(arrays, self.manifest.inputs, self.manifest.dim_limits)
        with self._open_lock:
            executor = self._live()
        results = executor.run(ordered)
        return dict(zip(self.manifest.output_names(), results))

    def selfcheck(self, cases: list[GoldenCase] | None = None) -> StageRecord:
        """Run every golden case (or the given ones) and compare with their eager-PyTorch outputs."""
        if cases is None:
            cases = load_golden(self.path / _golden_file(self.manifest))
        rows = []
        for case in cases:
            rows += compare_outputs(case.outputs, self.run(**case.inputs), self.tolerance, case.name,
                                    routing_flips_fail=not self.reduced_precision,
                                    causal=self.manifest.family == "gpt")  # decoders: parity.compare_outputs
        return stage_record(self.stage, rows, self.tolerance, self.routing_flip_bound)

    def fill_mask(self, text_or_ids, top_k: int = 5, mask_id: int | None = None):
        """BERT: for each [MASK], the top_k tokens with probabilities (see runtime/tasks/bert.py)."""
        from .tasks.bert import fill_mask

        return fill_mask(self, text_or_ids, top_k=top_k, mask_id=mask_id)

    def next_sentence(self, a, b) -> float:
        """BERT: the probability that sentence b follows sentence a (texts or id lists)."""
        from .tasks.bert import next_sentence

        return next_sentence(self, a, b)

    def embed(self, texts, normalize: bool = True) -> np.ndarray:
        """BERT: (N, D) mean-pooled sentence embeddings, L2-normalised (sentence-transformers style)."""
        from .tasks.bert import embed

        return embed(self, texts, normalize=normalize)

    @property
    def tokenizer(self):
        """The artifact's tokenizer (runtime/tokenizer.py); ArtifactError when it ships none."""
        if self._tokenizer is None:
            from .tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.path, self.manifest)
        return self._tokenizer

    def run_graph(self, name: str, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        """Run an extra graph of the artifact (manifest.graphs, e.g. "prefill", "decode") on this backend."""
        from .tasks.graphs import graph_spec

        spec = graph_spec(self.manifest, name)
        ordered = validate_inputs(arrays, spec.inputs, self.manifest.dim_limits)
        return dict(zip([o.name for o in spec.outputs], self.graph_executor(name).run(ordered)))

    def graph_executor(self, name: str) -> Executor:
        """The executor of an extra graph, opened on first use: positional inputs, no validation
        (the decoding loop calls it with buffers it made itself, runtime/tasks/kv_cache.py)."""
        from .tasks.graphs import open_graph

        with self._open_lock:
            if self._executor is None and not self._released:
                self._live()  # the sentence of a closed model
            if name not in self._graphs:
                self._graphs[name] = open_graph(self, name)
            return self._graphs[name]

    def generate(self, prompt, max_new_tokens: int = 32, **options):
        """GPT: continue prompt(s) with the KV cache; see runtime/tasks/generate.py for the options."""
        from .tasks.generate import generate

        return generate(self, prompt, max_new_tokens, **options)

    def translate(self, src, max_new_tokens: int = 32, **options):
        """Transformer: greedy translation of source(s); see runtime/tasks/translate.py."""
        from .tasks.translate import translate

        return translate(self, src, max_new_tokens, **options)

    def __repr__(self) -> str:
        return f"Model({self.manifest.name}/{self.manifest.preset}, backend={self.stage})"


def load(path: str | os.PathLike[str], backend: str = "tvm", target: str | None = None, *,
         verify_key: str | os.PathLike[str] | bytes | None = None, device_id: int = 0) -> Model:
    """Open an artifact folder, check it, and bind it to a backend.

    Before any library is loaded: the manifest's signature is verified when there is one (and must
    exist, by that key, when ``verify_key``, a PEM public key or its path, is given); every path is
    checked to lie inside the folder and to be listed; every file's sha256 is checked. A TVM build
    is native code: load only artifacts you trust.

    ``target`` picks a TVM build by tag ("cpu-znver4") or kind ("cpu", "cuda"); by default the
    first build this host can run is used, a CUDA one first when a GPU is present. ``device_id``
    is the CUDA device a CUDA build runs on.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    root = Path(path)
    Manifest.load(root)  # a sentence for a missing folder or manifest
    with artifact_lock(root, shared=True):  # a concurrent compile commits whole, before or after
        return open_model(root, _verified(root, verify_key), backend, target, device_id)


def verified_manifest(path: str | os.PathLike[str], verify_key=None) -> Manifest:
    """The manifest of an artifact after ``load``'s checks (signature, confinement, every file's
    sha256), without opening a backend: ``open_model`` binds it later."""
    root = Path(path)
    Manifest.load(root)  # a sentence for a missing folder or manifest
    with artifact_lock(root, shared=True):
        return _verified(root, verify_key)


def _verified(root: Path, verify_key) -> Manifest:
    from .format import read_manifest_bytes
    from .signing import verify_manifest_signature

    data = read_manifest_bytes(root)
    verify_manifest_signature(root, data, verify_key)
    manifest = Manifest.from_bytes(data, root)
    check_confinement(root, manifest)
    manifest.verify_files(root)
    check_position_limits(root, manifest)  # the manifest is not hashed; the weights are
    return manifest


def open_model(root: Path, manifest: Manifest, backend: str = "tvm", target: str | None = None,
               device_id: int = 0) -> Model:
    """Bind an already checked manifest to a backend (``load`` without the checks; compile uses it
    to measure a build that is not yet in the artifact's manifest)."""
    complete_dim_limits(manifest)
    if backend == "ort":
        from .backends.ort import OrtExecutor

        onnx_path = _onnx_path(root, manifest)
        reopen = lambda: OrtExecutor(onnx_path)  # noqa: E731
        return Model(root, manifest, backend, reopen(), None, reopen=reopen)
    build = select_build(manifest, target)
    from .backends.tvm import TvmExecutor
    from .params_file import binding_for

    device = build.device
    log.info("loading TVM build %s for %s", build.tag, manifest.name)
    if needs_amx(build.requires):
        request_amx_permission()  # before the first tile instruction, or the process gets SIGILL
    if build.buckets:  # tuned static-shape builds: dispatch by shape, the dynamic lib as fallback
        from .backends.buckets import BucketedExecutor

        reopen = lambda: BucketedExecutor(root, build, manifest.inputs, device, device_id=device_id)  # noqa: E731
    else:
        lib = confined(root, build.lib, "the build library")
        reopen = lambda: TvmExecutor(lib, device=device, device_id=device_id,  # noqa: E731
                                     sha256=manifest.files.get(build.lib), params=binding_for(root, build, build.lib))
    return Model(root, manifest, backend, reopen(), build, device_id, reopen=reopen)


def select_build(manifest: Manifest, target: str | None) -> BuildRecord:
    """The build asked for, or the best one this host can run; a sentence when there is none."""
    from .host import can_run, describe_host

    if not manifest.builds:
        raise ArtifactError(
            f"{manifest.name} has no TVM build yet; run `forgeline compile DIR --target cpu`, or use backend='ort'."
        )
    candidates = [b for b in manifest.builds.values() if target in (None, b.tag, _kind_name(b))]
    if not candidates:
        raise TargetMismatchError(
            f"the artifact has no build for target {target!r}; it holds {', '.join(manifest.builds)}."
        )
    host = describe_host()
    reasons = []
    # CUDA first when present; fp32 before reduced precision unless a tag asks for one; a CPU
    # build's VM compiled to native code before one kept in bytecode for profiling.
    for build in sorted(candidates, key=lambda b: (b.kind != "cuda", b.precision != "fp32",
                                                   b.kind == "llvm" and b.vm == "bytecode")):
        ok, why = can_run(build.requires, host)
        if ok and not build.codegen_only:
            return build
        reasons.append(f"{build.tag}: {why or build.note or 'code generation only, no loadable library'}")
    raise TargetMismatchError(
        f"this host ({host.arch}) cannot run any build of the artifact: {'; '.join(reasons)}. "
        "Compile it for this host with `forgeline compile DIR --target cpu`, or use backend='ort'."
    )


def _kind_name(build: BuildRecord) -> str:
    return "cpu" if build.kind == "llvm" else build.kind


def _onnx_path(root: Path, manifest: Manifest) -> Path:
    if ONNX_FILE not in manifest.files:
        raise ArtifactError(f"the manifest of {root} lists no {ONNX_FILE}; rebuild the artifact.")
    return confined(root, ONNX_FILE, "the ONNX graph")


def _golden_file(manifest: Manifest) -> str:
    if GOLDEN_FILE not in manifest.files:
        raise ArtifactError(f"the manifest lists no {GOLDEN_FILE}, so there is nothing to self-check against.")
    return GOLDEN_FILE

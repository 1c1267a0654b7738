"""`load` an artifact and run it: the light runtime's front door.

Imports numpy and, on demand, the TVM runtime or onnxruntime. Never torch, onnx or the TVM
compiler: an application that embeds the runtime pays only for what it runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import ArtifactError, ConfigError, TargetMismatchError
from .format import GOLDEN_FILE, ONNX_FILE, ORT_STAGE, BuildRecord, Manifest, StageRecord, TensorSpec
from .golden import GoldenCase, load_golden
from .parity import compare_outputs, stage_record
from .validate import validate_inputs

log = logging.getLogger(__name__)

BACKENDS = ("tvm", "ort")


class Executor(Protocol):
    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]: ...


class Model:
    """A loaded artifact bound to one backend (and, for TVM, one build)."""

    def __init__(self, path: Path, manifest: Manifest, backend: str, executor: Executor, build: BuildRecord | None):
        self.path = path
        self.manifest = manifest
        self.backend = backend
        self.build = build
        self._executor = executor
        self._graphs: dict[str, Executor] = {}  # extra graphs (manifest.graphs), opened on first use
        self._tokenizer = None

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
    def stage(self) -> str:
        return ORT_STAGE if self.build is None else f"tvm/{self.build.tag}"

    def run(self, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        """Validate the inputs, run the backend, and name the outputs."""
        ordered = validate_inputs(arrays, self.manifest.inputs, self.manifest.dim_limits)
        results = self._executor.run(ordered)
        return dict(zip(self.manifest.output_names(), results))

    def selfcheck(self, cases: list[GoldenCase] | None = None) -> StageRecord:
        """Run every golden case (or the given ones) and compare with their eager-PyTorch outputs."""
        if cases is None:
            cases = load_golden(self.path / _golden_file(self.manifest))
        rows = []
        for case in cases:
            rows += compare_outputs(case.outputs, self.run(**case.inputs), self.manifest.tolerance, case.name)
        return stage_record(self.stage, rows, self.manifest.tolerance)

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
        if name not in self._graphs:
            from .tasks.graphs import open_graph

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


def load(path: str | os.PathLike[str], backend: str = "tvm", target: str | None = None) -> Model:
    """Open an artifact folder, verify every file's sha256, and bind it to a backend.

    ``target`` picks a TVM build by tag ("cpu-znver4") or kind ("cpu", "cuda"); by default the
    first build this host can run is used, a CUDA one first when a GPU is present.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    root = Path(path)
    manifest = Manifest.load(root)
    manifest.verify_files(root)
    if backend == "ort":
        from .backends.ort import OrtExecutor

        return Model(root, manifest, backend, OrtExecutor(_onnx_path(root, manifest)), None)
    build = select_build(manifest, target)
    from .backends.tvm import TvmExecutor

    device = build.device
    log.info("loading TVM build %s for %s", build.tag, manifest.name)
    if build.buckets:  # tuned static-shape builds: dispatch by shape, the dynamic lib as fallback
        from .backends.buckets import BucketedExecutor

        return Model(root, manifest, backend, BucketedExecutor(root, build, manifest.inputs, device), build)
    return Model(root, manifest, backend, TvmExecutor(root / build.lib, device=device), build)


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
    for build in sorted(candidates, key=lambda b: b.kind != "cuda"):
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
    return root / ONNX_FILE


def _golden_file(manifest: Manifest) -> str:
    if GOLDEN_FILE not in manifest.files:
        raise ArtifactError(f"the manifest lists no {GOLDEN_FILE}, so there is nothing to self-check against.")
    return GOLDEN_FILE

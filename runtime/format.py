"""The artifact format: file names, the manifest schema, and integrity checks.

The format lives in the runtime because the runtime must read an artifact alone; `export` and
`compile` write it through this same code. An artifact is always read through its manifest, never by
probing file names.

Layout of an artifact folder::

    manifest.json          this schema
    model.onnx (+ .data)   the exported graph
    weights.safetensors    the eager checkpoint (lets `forgeline check` re-run eager PyTorch)
    golden.npz             reference inputs and eager outputs, case{i}/in/<name>, case{i}/out/<name>
    tvm/<tag>/model.so     one compiled build per target: kernels only
    tvm/<tag>/params.safetensors  its weights, layout-packed, shared by the build's libraries
    manifest.sig           optional ed25519 signature of manifest.json's bytes (signing.py)
    .forgeline.lock        the writers' lock file (artifact_io.py)

Every path in the manifest is relative and confined to the folder (confine.py); its fields are
type-checked before use (schema.py); writers go through artifact_io.py's transactions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import FORMAT_MARKER, MAX_MANIFEST_BYTES, atomic_write_bytes, current_umask
from .errors import ArtifactError
from .paths import confined
from .schema import check_manifest_dict

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "weights.safetensors"
WEIGHTS_CONFIG_KEY = "forgeline.config"  # the model config, as JSON, in the weights file's metadata
GOLDEN_FILE = "golden.npz"
TVM_DIR = "tvm"

ORT_STAGE = "onnxruntime"  # the stage name of the ONNX Runtime backend in manifests and reports
ROUTING_PREFIX = "routing."  # outputs that say which expert took which token: compared exactly

# Where a model came from, and so what its golden outputs (and `forgeline check`) compare with.
SOURCE_REFERENCES = {
    "registry": "eager PyTorch",  # a define/ model: `check` reruns it from weights.safetensors
    "module": "eager PyTorch at build time",  # an nn.Module handed to `forgeline.build`: golden.npz holds its outputs
    "onnx": "ONNX Runtime",  # an ONNX file: ONNX Runtime on that same file
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its dtype and its shape in symbolic dimension names."""

    name: str
    dtype: str  # numpy dtype name, e.g. "int64", "float32"
    dims: tuple[str | int, ...]  # symbolic names ("batch", "seq") or fixed sizes
    value_range: tuple[int, int] | None = None  # [lo, hi) for token ids; None when unbounded

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "dims": list(self.dims),
            "value_range": list(self.value_range) if self.value_range else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        rng = d.get("value_range")
        return cls(d["name"], d["dtype"], tuple(d["dims"]), tuple(rng) if rng else None)


def symbolic_sizes(specs: list[TensorSpec], arrays: list[Any]) -> dict[str, int]:
    """The size of each symbolic dim, read from arrays given in the specs' order."""
    sizes: dict[str, int] = {}
    for spec, array in zip(specs, arrays):
        for dim, size in zip(spec.dims, array.shape):
            if isinstance(dim, str):
                sizes[dim] = int(size)
    return sizes


@dataclass(frozen=True)
class Tolerance:
    """Elementwise |actual - expected| <= atol + rtol * |expected|, as numpy.allclose."""

    atol: float
    rtol: float


# The one default fp32 tolerance. fp32 kernels that reorder sums (tiled GEMMs, fused softmax) differ
# from PyTorch by ~1e-6 relative per op; a few layers of that stays well inside 1e-4 absolute on
# logits of order 1, while a real bug (a wrong mask, a swapped weight) is orders of magnitude larger.
DEFAULT_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-3)
# The tolerance of each build precision, against eager fp32 (the reference); a build records its
# own in the manifest. bf16 rounds both operands of every dense matmul to 8 significant bits
# (relative error up to 2^-9 each) and accumulates in fp32. Measured with AMX's numerics against
# eager fp32 on held-out inputs at 1x128 and 8x128 (benchmarks/precision_accuracy.py): worst max abs
# 2.7e-2 on a briefly trained Shakespeare gpt's logits (|logits| <= 8.9), 1.1e-2 on random-init
# gpt-small's (<= 1.8), 6.5e-3 on bert-small's; the fp32 builds stay within 6e-6. The bound
# 5e-2 + 5e-2 * |x| is at least 1.8x the worst bf16 error while a real bug (a swapped weight, a
# wrong mask) still moves outputs by 0.1-1.
# fp16 keeps 11 significant bits (bf16: 8), so its rounding error is 8x smaller; 1e-2 + 1e-2 * |x| is
# that bound scaled down, with the same headroom. It is not yet measured on a GPU (see the README).
# int8 (dynamic quantization: per-column weights, per-row activations, int32 sums), measured
# against eager fp32 on the golden inputs (1x13, 3x26) on a Xeon with AVX512-VNNI, the AVX2
# kernel built for haswell and run there too: worst max abs 4.5e-2 (VNNI) and 7.4e-2 (AVX2, 7-bit
# weights) on random-init gpt-small's logits (|logits| <= 1.6), 2.6e-2 / 3.9e-2 on bert-small's,
# 5.6e-3 to 1.0e-2 at tiny. ONNX Runtime's quantize_dynamic showed 3.5e-2 to 8.3e-2 on these
# models (small, 1x128 and 8x128, against ORT fp32). The bound 0.15 + 0.05 * |x| is at least 2x
# the worst. Gross bugs fail it: dropping the u8 shift's compensation moved gpt-small's logits by
# 3.7-4.1. A subtle one (the shift compensated with 127 instead of 128) moved them by only 0.18,
# so the kernel's tests check its integer sums exactly rather than rely on this bound.
PRECISION_TOLERANCE = {"fp32": DEFAULT_TOLERANCE, "bf16": Tolerance(atol=5e-2, rtol=5e-2),
                       "fp16": Tolerance(atol=1e-2, rtol=1e-2), "int8": Tolerance(atol=0.15, rtol=0.05)}


# Routing flips a reduced-precision build may show, as a share of all routing decisions (the
# elements of every ``routing.*`` output over every golden case); the golden cases with a flip are
# reported but not held to the value tolerance (a different expert ran there), and something must
# stay flip-free (runtime/parity.py). fp32 allows none: any flip fails an fp32 build. Measured on
# random-init small bert-moe and gpt-moe-tc at E = 4 and 32 (capacity factor 2, the MoE scaling
# benchmark's models) on an AMX + AVX512-VNNI Xeon, golden cases and held-out 1x128, 1x128, 8x128:
# int8 flipped at most 0.27% (golden) and 1.11% (held-out, gpt-moe-tc E=4), bf16 at most 0.03% and
# 0.27% (same model). Random-init routers score experts nearly alike, so near-ties are common;
# a trained router has fewer. The bounds are about 2x (int8) and 3.7x (bf16) the worst held-out
# share; fp16 (11 significant bits, CUDA, not measured) takes bf16's.
ROUTING_FLIP_BOUND = {"fp32": 0.0, "bf16": 0.01, "fp16": 0.01, "int8": 0.025}


def routing_flip_bound(precision: str) -> float:
    """The share of routing decisions a ``precision`` build may flip (ROUTING_FLIP_BOUND)."""
    precision_tolerance(precision)  # an unknown precision: the same sentence
    return ROUTING_FLIP_BOUND[precision]


def precision_tolerance(precision: str) -> Tolerance:
    if precision not in PRECISION_TOLERANCE:
        raise ArtifactError(f"precision {precision!r} has no tolerance; this forgeline knows "
                            f"{', '.join(PRECISION_TOLERANCE)}.")
    return PRECISION_TOLERANCE[precision]


@dataclass
class OutputParity:
    """How one output of one backend compares with eager PyTorch on one input case."""

    output: str
    case: str
    max_abs: float
    max_rel: float
    frac_over: float  # share of elements outside tolerance
    passed: bool
    exact: bool = False  # routing outputs must match exactly: a routing flip is a failure
    note: str = ""  # names/shape mismatch, NaN, ...
    decisions: int = 0  # routing outputs: the routing decisions compared (frac_over of them differ)


@dataclass
class StageRecord:
    """One stage (ORT, or a TVM build) measured against eager PyTorch."""

    stage: str  # "onnxruntime" or "tvm/<tag>"
    passed: bool
    tolerance: Tolerance
    parity: list[OutputParity] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageRecord:
        return cls(
            stage=d["stage"],
            passed=d["passed"],
            tolerance=Tolerance(**d["tolerance"]),
            parity=[OutputParity(**p) for p in d.get("parity", [])],
        )


@dataclass
class BuildRecord:
    """One compiled TVM build inside the artifact."""

    tag: str  # folder name under tvm/, e.g. "cpu-znver4"
    kind: str  # "llvm" | "cuda"
    target: dict[str, Any]  # the TVM Target dict it was built for
    requires: dict[str, Any]  # what a host must have to run it (arch, cpu features, device)
    lib: str  # path of the library, relative to the artifact root
    codegen_only: bool = False  # True when it holds code that cannot be loaded on any host yet
    graph_libs: dict[str, str] = field(default_factory=dict)  # extra graph name (Manifest.graphs) -> lib path
    note: str = ""
    build_seconds: float = 0.0
    # Tuned static-shape builds beside the dynamic lib, keyed "1x128" (sizes in input dim order):
    # {dims, lib, trials, tasks_tuned, tasks_default, tuning_seconds, database_sha256}. The
    # runtime serves one when every symbolic dim of a call equals its dims exactly.
    buckets: dict[str, dict[str, Any]] = field(default_factory=dict)
    unscheduled: list[str] = field(default_factory=list)  # kernels no CPU schedule took (naive loops)
    # Of the matmuls: "fp32", "bf16" or "int8" (CPU; routers, norms, softmax stay fp32), or "fp16"
    # (CUDA: fp16 matmul operands and weights, fp32 accumulation).
    precision: str = "fp32"
    tolerance: dict[str, float] = field(default_factory=dict)  # {atol, rtol} this build is held to
    # "KxN" of each matmul with a constant weight that the CPU dense-layer rewrites took (GEMM
    # schedule with packed weights; the reduced-precision kernels), in program order.
    dense_layers: list[str] = field(default_factory=list)
    # The weights its libraries take at load (params_file.py): the build's parameter file and, per
    # library path, the ordered keys of its ``params`` tuple. A bucket's keys are in its record
    # ("params"), with "params_file" when it adds tensors the build's file lacks.
    params_file: str = ""
    lib_params: dict[str, list[str]] = field(default_factory=dict)
    # How the Relax VM runs its libraries' graphs (compile/vm_exec.py): "compiled" (native code, CPU
    # builds) or "bytecode" (interpreted: CUDA builds, builds made for `forgeline bench --profile`,
    # and every build from before the field existed).
    vm: str = "bytecode"

    @property
    def parity_tolerance(self) -> Tolerance | None:
        """The build's own tolerance (reduced precision), or None: the manifest's applies."""
        return Tolerance(**self.tolerance) if self.tolerance else None

    @property
    def device(self) -> str:
        """The runtime device a library of this build runs on."""
        return "cuda" if self.kind == "cuda" else "cpu"


@dataclass
class GraphSpec:
    """An extra graph beside model.onnx (e.g. the KV-cache "prefill" and "decode" of generation)."""

    onnx: str  # path relative to the artifact root
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def to_dict(self) -> dict[str, Any]:
        return {"onnx": self.onnx, "inputs": [s.to_dict() for s in self.inputs],
                "outputs": [s.to_dict() for s in self.outputs]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphSpec:
        return cls(d["onnx"], [TensorSpec.from_dict(s) for s in d["inputs"]],
                   [TensorSpec.from_dict(s) for s in d["outputs"]])


@dataclass
class Manifest:
    """Everything the runtime needs to know about an artifact, and every stage's measured error."""

    name: str  # model name, e.g. "gpt-moe"
    preset: str
    family: str
    config: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dim_limits: dict[str, int | None]  # max size per symbolic dim (None: unbounded)
    tolerance: Tolerance = DEFAULT_TOLERANCE
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    golden_cases: list[dict[str, int]] = field(default_factory=list)  # dim sizes of each case
    stages: dict[str, StageRecord] = field(default_factory=dict)
    builds: dict[str, BuildRecord] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    tokenizer: str | None = None  # relative path of tokenizer.json (HF) or {"type": "bytes"}; None: no text I/O
    graphs: dict[str, GraphSpec] = field(default_factory=dict)  # extra graphs by name, e.g. prefill/decode
    source: str = "registry"  # a key of SOURCE_REFERENCES: where the model came from

    @property
    def reference(self) -> str:
        """What the golden outputs were computed by (SOURCE_REFERENCES)."""
        return SOURCE_REFERENCES[self.source]

    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = [s.to_dict() for s in self.inputs]
        d["outputs"] = [s.to_dict() for s in self.outputs]
        d["graphs"] = {k: g.to_dict() for k, g in self.graphs.items()}
        return {"format": FORMAT_MARKER, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"manifest format_version is {version!r} but this forgeline reads version "
                f"{FORMAT_VERSION}; rebuild the artifact with this forgeline."
            )
        if d.get("format", FORMAT_MARKER) != FORMAT_MARKER:
            raise ArtifactError(f"manifest.json has format {d.get('format')!r}, not {FORMAT_MARKER!r}: it is not "
                                "a forgeline manifest.")
        check_manifest_dict(d)
        try:
            return cls(
                name=d["name"],
                preset=d["preset"],
                family=d["family"],
                config=d["config"],
                inputs=[TensorSpec.from_dict(s) for s in d["inputs"]],
                outputs=[TensorSpec.from_dict(s) for s in d["outputs"]],
                dim_limits=d["dim_limits"],
                tolerance=Tolerance(**d["tolerance"]),
                files=d["files"],
                golden_cases=d.get("golden_cases", []),
                stages={k: StageRecord.from_dict(v) for k, v in d.get("stages", {}).items()},
                builds={k: BuildRecord(**v) for k, v in d.get("builds", {}).items()},
                versions=d.get("versions", {}),
                tokenizer=d.get("tokenizer"),
                graphs={k: GraphSpec.from_dict(v) for k, v in d.get("graphs", {}).items()},
                source=d.get("source", "registry"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"manifest.json is missing or has a malformed field ({exc}).") from exc

    def save(self, root: Path) -> None:
        _atomic_write_text(Path(root) / MANIFEST_FILE, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_bytes(cls, data: bytes, where: str | os.PathLike[str] = MANIFEST_FILE) -> Manifest:
        """Parse manifest bytes (the exact bytes a signature covers)."""
        try:
            parsed = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{where} is not valid JSON ({exc}); the artifact is corrupt, rebuild it.") from exc
        except RecursionError as exc:
            raise ArtifactError(f"{where} nests its JSON too deeply to be a manifest; the artifact is corrupt.") from exc
        if not isinstance(parsed, dict):
            raise ArtifactError(f"{where} does not hold a JSON object; the artifact is corrupt, rebuild it.")
        return cls.from_dict(parsed)

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> Manifest:
        root = Path(root)
        if not root.exists():
            raise ArtifactError(f"{root} does not exist; pass the folder written by `forgeline export` or `build`.")
        path = root / MANIFEST_FILE
        if not path.is_file():
            raise ArtifactError(
                f"{root} has no {MANIFEST_FILE}, so it is not a forgeline bundle or artifact; "
                "create one with `forgeline export` or `forgeline build`."
            )
        return cls.from_bytes(read_manifest_bytes(root), path)

    def record_file(self, root: Path, relpath: str) -> None:
        """Add (or refresh) a file's sha256 in the manifest."""
        self.files[relpath] = sha256_file(Path(root) / relpath)

    def verify_files(self, root: Path, only: list[str] | None = None) -> None:
        """Check that every listed file exists, lies inside the artifact and still has its recorded sha256."""
        for relpath, expected in self.files.items():
            if only is not None and relpath not in only:
                continue
            path = confined(root, relpath, "a listed file")
            if not path.is_file():
                raise ArtifactError(f"{relpath} is listed in the manifest but missing from {root}; rebuild the artifact.")
            actual = sha256_file(path)
            if actual != expected:
                raise ArtifactError(
                    f"{relpath} in {root} has sha256 {actual[:12]}… but the manifest recorded "
                    f"{expected[:12]}…: the file is corrupt, truncated or edited; rebuild the artifact."
                )


def set_shareable_mode(path: Path) -> None:
    """rw for the owner, readable by all, as a plain `open` would create it under this umask."""
    os.chmod(path, 0o666 & ~current_umask())


def read_manifest_bytes(root: Path) -> bytes:
    """The manifest file's bytes, refusing a symlink or a file far larger than any manifest."""
    path = Path(root) / MANIFEST_FILE
    if path.is_symlink():
        raise ArtifactError(f"{path} is a symbolic link; an artifact's manifest must be a plain file in it.")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is {size} bytes, far more than a manifest holds; the artifact is corrupt.")
    return path.read_bytes()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file, fsync and rename, so a crash never leaves half a manifest."""
    atomic_write_bytes(path, text.encode())

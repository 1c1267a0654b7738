"""Run the artifact's ONNX graph with ONNX Runtime (the reference backend of the runtime)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, MissingDependencyError, TargetMismatchError

log = logging.getLogger(__name__)


class OrtExecutor:
    """Positional inputs in graph order in, outputs in graph order out."""

    def __init__(self, onnx_path: Path, device: str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependencyError(
                "the ORT backend needs onnxruntime; install it with `pip install onnxruntime` "
                "(or onnxruntime-gpu on Linux x86-64)."
            ) from exc
        providers = self._providers(ort, device)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # ORT warns about unused initializers on every load
        try:
            self._session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for a broken graph
            raise ArtifactError(f"ONNX Runtime could not load {onnx_path} ({exc}); rebuild the artifact.") from exc
        self._input_names = [i.name for i in self._session.get_inputs()]
        log.info("ONNX Runtime session on %s", providers[0])

    @staticmethod
    def _providers(ort, device: str) -> list[str]:
        # Ask for CUDA only when it is really there: otherwise ORT logs errors for every session.
        if device == "cpu":
            return ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            from .host import describe_host

            if describe_host().cuda_devices:
                return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        raise TargetMismatchError(
            f"the ORT backend cannot use device {device!r} on this host; use device='cpu'."
        )

    @staticmethod
    def shared_buffer(shape: tuple[int, ...], dtype: str) -> tuple[np.ndarray, np.ndarray]:
        """A zeroed input buffer and its numpy view (the same array: ORT reads CPU numpy in place)."""
        array = np.zeros(shape, dtype=dtype)
        return array, array

    def close(self) -> None:
        """Drop the session and the weights it holds; the executor cannot run afterwards."""
        self._session = None

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if self._session is None:
            raise ArtifactError("this ONNX Runtime session was closed; load the artifact again to run it.")
        feeds = dict(zip(self._input_names, arrays))
        return [np.asarray(out) for out in self._session.run(None, feeds)]

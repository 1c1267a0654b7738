"""forgeline's light runtime: load an artifact, verify it, run it, self-check it.

Imports numpy, and on demand the TVM runtime or onnxruntime; never torch, onnx or the TVM compiler.
"""

from .errors import ArtifactError, ForgelineError, InputError, ParityError, TargetMismatchError
from .format import Manifest, TensorSpec
from .model import Model, load

__all__ = [
    "ArtifactError",
    "ForgelineError",
    "InputError",
    "Manifest",
    "Model",
    "ParityError",
    "TargetMismatchError",
    "TensorSpec",
    "load",
]

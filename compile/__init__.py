"""Compile stage: bundle → TVM builds per target, each checked against the golden vectors.

Never imports torch: a compile host needs only onnx and TVM.
"""

from .artifact import CompileOptions, compile_artifact

__all__ = ["CompileOptions", "compile_artifact"]

"""Export stage: torch model → bundle (model.onnx, weights, golden vectors, manifest)."""

from .bundle import ExportOptions, export_into, export_model, record_ort_parity
from .eager import random_inputs, run_eager

__all__ = ["ExportOptions", "export_into", "export_model", "random_inputs", "record_ort_parity", "run_eager"]

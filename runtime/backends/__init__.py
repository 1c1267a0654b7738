"""Executors that run one graph of an artifact: a TVM build (``tvm``), ONNX Runtime (``ort``), and
per-shape dispatch between a dynamic build and its tuned buckets (``buckets``).

Each takes numpy arrays in input order and returns numpy arrays in output order.
"""

"""Rewrites of the exported ONNX graph, before TVM imports it, for patterns its importer rejects.

Each rewrite is an identity on the graph's meaning; it only changes how a value is spelled.

- **Reshape of a scalar to one element.** When a reshape's ``-1`` dim is a product of symbolic
  sizes (MoE's ``(E, G*s, D) -> (G, E*s, D)``), the dynamo exporter computes it with scalar
  Mul/Div nodes and turns the scalar into a 1-element shape piece with ``Reshape(x, [-1])``.
  TVM's importer holds such a scalar as a ``PrimValue`` and its Reshape converter rejects it
  ("Reshape expects the input data to be a Tensor"). For a rank-0 input ``Unsqueeze(x, [0])`` is
  the same value, and the importer takes it.

Graphs from other exporters get the rewrites of graph_fixups.py first (weights listed as inputs,
positions from Range, scalar ConstantOfShape, inference Dropout, ONNX Attention).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def normalize_for_import(model) -> int:
    """Rewrite ``model`` (an onnx ModelProto) in place; returns the number of values rewritten."""
    from .graph_fixups import (attention_as_matmuls, drop_weights_listed_as_inputs, inference_dropouts,
                               positions_without_range, scalar_constants_of_shape)

    rewritten = (drop_weights_listed_as_inputs(model) + positions_without_range(model)
                 + scalar_constants_of_shape(model) + inference_dropouts(model))
    if any(node.op_type == "Attention" for node in model.graph.node):  # shape inference only where needed
        rewritten += attention_as_matmuls(model)
    return rewritten + _scalar_reshapes(model)


def _scalar_reshapes(model) -> int:
    from onnx import numpy_helper

    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    candidates = [node for node in model.graph.node if node.op_type == "Reshape"
                  and node.input[1] in constants
                  and numpy_helper.to_array(constants[node.input[1]]).reshape(-1).tolist() in ([-1], [1])]
    if not candidates:
        return 0  # no shape inference over a model with nothing to rewrite
    scalars = _rank0_values(model)
    rewritten = 0
    for node in candidates:
        if node.input[0] not in scalars:
            continue
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(index, _unsqueeze0(model, node))
        rewritten += 1
    if rewritten:
        logger.info("Rewrote %d scalar Reshape node(s) as Unsqueeze for TVM's importer.", rewritten)
    return rewritten


def _rank0_values(model) -> set[str]:
    """Names of the values ONNX shape inference finds to be scalars (rank 0)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=False)
    except Exception:  # noqa: BLE001 - inference is best effort; without it nothing is rewritten
        logger.debug("ONNX shape inference failed; no scalar Reshape is rewritten", exc_info=True)
        return set()
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {info.name for info in infos
            if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape")
            and len(info.type.tensor_type.shape.dim) == 0}


def _unsqueeze0(model, reshape):
    from onnx import TensorProto, helper

    axes = f"{reshape.output[0]}__unsqueeze_axes"
    model.graph.initializer.append(helper.make_tensor(axes, TensorProto.INT64, [1], [0]))
    return helper.make_node("Unsqueeze", [reshape.input[0], axes], list(reshape.output),
                            name=f"{reshape.name or reshape.output[0]}__as_unsqueeze")


__all__ = ["normalize_for_import"]

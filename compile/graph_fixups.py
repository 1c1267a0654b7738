"""Rewrites for ONNX graphs that forgeline did not export (torch.onnx on ``transformers``, the model zoo).

Each rewrite keeps the graph's meaning and changes only how a value is spelled, so that TVM 0.27's
importer takes it. ``normalize_for_import`` (onnx_fixups.py) runs them before every import.

- **Weights listed as graph inputs.** Older exporters (the model zoo, opset 9) list every
  initializer among the graph inputs too, which by ONNX's rules makes it an input with a default.
  Nobody feeds those, and TVM's importer would make each one a function parameter. Here an
  initializer that is also an input is a weight: it leaves the input list.
- **Positions from ``Range(0, n, 1)``.** ``torch.arange(seq)`` (``transformers``' attention masks,
  position ids) becomes a Range on a length read from a Shape. TVM's importer gives its result a
  fresh length variable that it cannot tie to ``seq``, the mask's shape becomes unknown, and a later
  ``Reshape(x, [batch, seq, -1])`` fails ("Reshape expects the input tensor to have known shape").
  ``CumSum(ConstantOfShape([n], 1)) - 1`` is the same vector, and the importer keeps its length
  tied to ``n`` (docs/tvm-notes.md).
- **``ConstantOfShape`` of an empty shape.** The TorchScript exporter (``dynamo=False``) writes a
  scalar as ConstantOfShape of a constant ``[]``; TVM's converter broadcasts the one-element value
  to rank 0 and fails ("broadcast_to expects the input shape to have the number of ndim at
  least..."). A Constant holding that scalar is the same value.
- **Inference Dropout.** Model-zoo graphs keep their Dropout nodes, and at opset < 12 each one also
  writes a mask nobody reads. TVM fuses the matmul before it, the copy and the mask's ``full_like``
  into one kernel with two outputs, which the CPU schedule rules reject ("The block ... is an output
  block"). Outside training a Dropout is the identity; one whose mask is unread becomes Identity.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def drop_weights_listed_as_inputs(model) -> int:
    """Remove from ``graph.input`` every name that is also an initializer; returns how many."""
    weights = {init.name for init in model.graph.initializer}
    kept = [value for value in model.graph.input if value.name not in weights]
    dropped = len(model.graph.input) - len(kept)
    if dropped:
        del model.graph.input[:]
        model.graph.input.extend(kept)
        logger.info("Treated %d initializer(s) listed as graph inputs as weights.", dropped)
    return dropped


def positions_without_range(model) -> int:
    """Rewrite each integer ``Range(0, n, 1)`` with a computed
    ``n`` as ``CumSum(ConstantOfShape([n], 1)) - 1`` where start is 0 and delta 1; returns how many."""
    from onnx import helper, numpy_helper

    constants = _constants(model)
    nodes, rewritten = [], 0
    for node in model.graph.node:
        start, limit, delta = (list(node.input) + ["", "", ""])[:3]
        if not (node.op_type == "Range" and limit not in constants and _is_int64(constants, start, 0)
                and _is_int64(constants, delta, 1)):  # Range(0, n, 1) is what exporters write
            nodes.append(node)
            continue
        stem = f"{node.output[0]}__positions"
        values = {"axes": np.array([0], np.int64), "zero": np.array(0, np.int64), "one": np.array(1, np.int64)}
        model.graph.initializer.extend(numpy_helper.from_array(v, f"{stem}_{k}") for k, v in values.items())
        unsqueeze = (helper.make_node("Unsqueeze", [limit, f"{stem}_axes"], [f"{stem}_len"]) if _opset(model) >= 13
                     else helper.make_node("Unsqueeze", [limit], [f"{stem}_len"], axes=[0]))
        nodes += [  # (n,) 0, 1, ..., n-1
            unsqueeze,
            helper.make_node("ConstantOfShape", [f"{stem}_len"], [f"{stem}_ones"],
                             value=numpy_helper.from_array(np.array([1], np.int64))),
            helper.make_node("CumSum", [f"{stem}_ones", f"{stem}_zero"], [f"{stem}_count"]),
            helper.make_node("Sub", [f"{stem}_count", f"{stem}_one"], [node.output[0]]),
        ]
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        logger.info("Rewrote %d Range node(s) as a cumulative sum for TVM's importer.", rewritten)
    return rewritten


def scalar_constants_of_shape(model) -> int:
    """Replace each ConstantOfShape whose shape is a constant ``[]`` by a scalar Constant; returns how many."""
    from onnx import helper, numpy_helper

    constants = _constants(model)
    rewritten = 0
    for index, node in enumerate(model.graph.node):
        shape = constants.get(node.input[0]) if node.op_type == "ConstantOfShape" else None
        if shape is None or shape.size != 0:
            continue
        value = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), np.zeros(1, np.float32))
        scalar = helper.make_node("Constant", [], list(node.output), name=f"{node.name or node.output[0]}__scalar",
                                  value=numpy_helper.from_array(value.reshape(())))
        model.graph.node.remove(node)
        model.graph.node.insert(index, scalar)
        rewritten += 1
    if rewritten:
        logger.info("Rewrote %d ConstantOfShape node(s) of an empty shape as scalar constants.", rewritten)
    return rewritten


def inference_dropouts(model) -> int:
    """Replace each Dropout that is not in training mode and whose mask is unread by Identity; returns how many."""
    from onnx import helper

    constants = _constants(model)
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    rewritten = 0
    for index, node in enumerate(model.graph.node):
        if node.op_type != "Dropout" or (len(node.output) > 1 and node.output[1] in read):
            continue
        training = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if training is not None and (training not in constants or bool(constants[training].reshape(()))):
            continue  # training mode, or not known to be off
        identity = helper.make_node("Identity", [node.input[0]], [node.output[0]],
                                    name=f"{node.name or node.output[0]}__identity")
        model.graph.node.remove(node)
        model.graph.node.insert(index, identity)
        rewritten += 1
    if rewritten:
        logger.info("Rewrote %d inference Dropout node(s) as Identity.", rewritten)
    return rewritten


def _is_int64(constants: dict[str, np.ndarray], name: str, value: int) -> bool:
    array = constants.get(name)
    return array is not None and array.dtype == np.int64 and array.size == 1 and int(array.reshape(())) == value


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _constants(model) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes by name, as arrays."""
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return constants


def first_unsupported_node(model, supported: set[str]) -> tuple[str, str] | None:
    """(op type, node name) of the first node whose op TVM's importer has no converter for."""
    for index, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in supported | {"Constant", "If"}:
            return node.op_type, node.name or f"#{index} (unnamed, output {node.output[0]!r})"
    return None


__all__ = ["drop_weights_listed_as_inputs", "first_unsupported_node", "inference_dropouts",
           "positions_without_range", "scalar_constants_of_shape"]

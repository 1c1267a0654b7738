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
- **ONNX's own Attention (opset 23).** torch.onnx at opset 23 writes ``scaled_dot_product_attention``
  as one ``Attention`` node; TVM 0.27's converter of that name is for Microsoft's contrib op and
  fails ("'num_heads'"). The 4-D form without a KV cache, causal flag or softcap is
  ``Softmax(Q Kᵀ · scale + mask) V`` (a boolean mask adds 0 where true and -inf elsewhere, as the
  ONNX specification states; a query with every key masked gets 0, as ONNX Runtime and torch give),
  and is written out as those ops.
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
    """Rewrite each integer ``Range(0, n, 1)`` with a computed ``n`` as ``CumSum(ConstantOfShape([n], 1)) - 1``;
    returns how many."""
    from onnx import helper, numpy_helper

    constants = _constants(model)

    def replace(node):
        start, limit, delta = (list(node.input) + ["", "", ""])[:3]
        if not (node.op_type == "Range" and limit not in constants and _is_int64(constants, start, 0)
                and _is_int64(constants, delta, 1)):  # Range(0, n, 1) is what exporters write
            return None
        stem = f"{node.output[0]}__positions"
        values = {"axes": np.array([0], np.int64), "zero": np.array(0, np.int64), "one": np.array(1, np.int64)}
        model.graph.initializer.extend(numpy_helper.from_array(v, f"{stem}_{k}") for k, v in values.items())
        unsqueeze = (helper.make_node("Unsqueeze", [limit, f"{stem}_axes"], [f"{stem}_len"]) if _opset(model) >= 13
                     else helper.make_node("Unsqueeze", [limit], [f"{stem}_len"], axes=[0]))
        return [  # (n,) 0, 1, ..., n-1
            unsqueeze,
            helper.make_node("ConstantOfShape", [f"{stem}_len"], [f"{stem}_ones"],
                             value=numpy_helper.from_array(np.array([1], np.int64))),
            helper.make_node("CumSum", [f"{stem}_ones", f"{stem}_zero"], [f"{stem}_count"]),
            helper.make_node("Sub", [f"{stem}_count", f"{stem}_one"], [node.output[0]]),
        ]

    return _rewrite_nodes(model, replace, "Range node(s) as a cumulative sum")


def scalar_constants_of_shape(model) -> int:
    """Replace each ConstantOfShape whose shape is a constant ``[]`` by a scalar Constant; returns how many."""
    from onnx import helper, numpy_helper

    constants = _constants(model)

    def replace(node):
        shape = constants.get(node.input[0]) if node.op_type == "ConstantOfShape" else None
        if shape is None or shape.size != 0:
            return None
        value = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), np.zeros(1, np.float32))
        return [helper.make_node("Constant", [], list(node.output), name=f"{node.name or node.output[0]}__scalar",
                                 value=numpy_helper.from_array(value.reshape(())))]

    return _rewrite_nodes(model, replace, "ConstantOfShape node(s) of an empty shape as scalar constants")


def inference_dropouts(model) -> int:
    """Replace each Dropout that is not in training mode and whose mask is unread by Identity; returns how many."""
    from onnx import helper

    constants = _constants(model)
    read = _read_values(model)

    def replace(node):
        if node.op_type != "Dropout" or (len(node.output) > 1 and node.output[1] in read):
            return None
        training = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if training is not None and (training not in constants or bool(constants[training].reshape(()))):
            return None  # training mode, or not known to be off
        return [helper.make_node("Identity", [node.input[0]], [node.output[0]],
                                 name=f"{node.name or node.output[0]}__identity")]

    return _rewrite_nodes(model, replace, "inference Dropout node(s) as Identity")


def attention_as_matmuls(model) -> int:
    """Write each ONNX (opset 23) Attention node of the plain 4-D form as MatMul/Softmax; returns how many."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - without shapes nothing is rewritten; the importer names the node
        return 0
    types = {v.name: v.type.tensor_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    read = _read_values(model)

    def replace(node):
        plan = _attention_plan(node, types, read) if node.op_type == "Attention" else None
        return None if plan is None else _attention_nodes(model, node, *plan)

    return _rewrite_nodes(model, replace, "ONNX Attention node(s) as MatMul and Softmax")


def _attention_plan(node, types, read: set[str]) -> tuple[float, bool | None] | None:
    """(scale, mask is boolean; None without a mask) when the node has the plain form, else None."""
    from onnx import TensorProto, helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if (node.domain not in ("", "ai.onnx") or len(node.input) > 4 or any(out in read for out in node.output[1:])
            or attrs.get("is_causal", 0) or attrs.get("softcap", 0.0) or attrs.get("qk_matmul_output_mode", 0)
            or "q_num_heads" in attrs or "kv_num_heads" in attrs):
        return None
    q, k = types.get(node.input[0]), types.get(node.input[1])
    if q is None or k is None or q.elem_type != TensorProto.FLOAT or len(q.shape.dim) != 4:
        return None
    heads = (q.shape.dim[1], k.shape.dim[1])
    if not all(d.HasField("dim_value") for d in heads) or heads[0].dim_value != heads[1].dim_value:
        return None  # grouped-query attention repeats K/V heads: not rewritten
    depth = q.shape.dim[3]
    if "scale" not in attrs and not depth.HasField("dim_value"):
        return None
    scale = attrs.get("scale", 1.0 / float(np.sqrt(depth.dim_value)))
    if len(node.input) < 4 or not node.input[3]:
        return scale, None
    mask = types.get(node.input[3])
    if mask is None or mask.elem_type not in (TensorProto.BOOL, TensorProto.FLOAT):
        return None
    return scale, mask.elem_type == TensorProto.BOOL


def _attention_nodes(model, node, scale: float, boolean_mask: bool | None) -> list:
    """Softmax(Q Kᵀ · scale + mask) V, writing the node's first output."""
    from onnx import helper, numpy_helper

    stem = f"{node.output[0]}__attention"
    q, k, v = node.input[:3]
    model.graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{stem}_scale"),
                                    numpy_helper.from_array(np.array(0.0, np.float32), f"{stem}_zero"),
                                    numpy_helper.from_array(np.array(-np.inf, np.float32), f"{stem}_ninf")])
    nodes = [helper.make_node("Transpose", [k], [f"{stem}_kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", [q, f"{stem}_kt"], [f"{stem}_qk"]),  # (B, H, S, T)
             helper.make_node("Mul", [f"{stem}_qk", f"{stem}_scale"], [f"{stem}_scores"])]
    scores = f"{stem}_scores"
    if boolean_mask is not None:
        bias = node.input[3]
        if boolean_mask:
            nodes.append(helper.make_node("Where", [bias, f"{stem}_zero", f"{stem}_ninf"], [f"{stem}_bias"]))
            bias = f"{stem}_bias"
        nodes.append(helper.make_node("Add", [scores, bias], [f"{stem}_masked"]))
        scores = f"{stem}_masked"
    nodes.append(helper.make_node("Softmax", [scores], [f"{stem}_weights"], axis=-1))
    weights = f"{stem}_weights"
    if boolean_mask is not None:  # a query whose keys are all masked gets 0, as ONNX Runtime and torch give
        nodes += [helper.make_node("IsNaN", [weights], [f"{stem}_empty"]),
                  helper.make_node("Where", [f"{stem}_empty", f"{stem}_zero", weights], [f"{stem}_kept"])]
        weights = f"{stem}_kept"
    nodes.append(helper.make_node("MatMul", [weights, v], [node.output[0]]))  # (B, H, S, D)
    return nodes


def _rewrite_nodes(model, replace, what: str) -> int:
    """Rebuild the node list with ``replace(node)`` applied (a list of nodes in its place, or None to
    keep it); logs and returns how many were replaced."""
    nodes, rewritten = [], 0
    for node in model.graph.node:
        replacement = replace(node)
        nodes.extend([node] if replacement is None else replacement)
        rewritten += replacement is not None
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        logger.info("Rewrote %d %s for TVM's importer.", rewritten, what)
    return rewritten


def _read_values(model) -> set[str]:
    """Every value some node reads or the graph returns."""
    return {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}


def _is_int64(constants: dict[str, np.ndarray], name: str, value: int) -> bool:
    array = constants.get(name)
    return array is not None and array.dtype == np.int64 and array.size == 1 and int(array.reshape(())) == value


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _constants(model) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes by name, as arrays.

    Initializers stored as external data are weights, never the small shape and scalar constants
    the rewrites look for; they are left unread, since the graph is loaded without its external
    data (tvm_build.py reads each weight once, as the importer reaches it).
    """
    from onnx import TensorProto, numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer
                 if init.data_location != TensorProto.EXTERNAL}
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


__all__ = ["attention_as_matmuls", "drop_weights_listed_as_inputs", "first_unsupported_node", "inference_dropouts",
           "positions_without_range", "scalar_constants_of_shape"]

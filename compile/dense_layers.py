"""Which matmuls of an imported graph are dense layers: ``x @ W`` with a constant 2-D weight.

The CPU build's dense-layer rewrites (the GEMM schedule with weights packed at build time, and the
reduced-precision kernels) take exactly these: the activation's last dim is a known K and the
weight is a constant (K, N). On a registry model that is every projection; on a graph from
elsewhere it is whatever matches, and the build record lists them so a user can see what the
chosen precision applied to (and what it did not).
"""

from __future__ import annotations


def dense_layers(mod) -> list[str]:
    """``"KxN"`` for each dense matmul of the module's Relax functions, in program order."""
    import tvm
    from tvm import relax

    found: list[str] = []
    op = tvm.ir.Op.get("relax.matmul")

    def visit(node) -> None:
        if isinstance(node, relax.Call) and node.op.same_as(op) and len(node.args) == 2:
            shape = dense_shape(node.args[0], node.args[1])
            if shape is not None:
                found.append(f"{shape[0]}x{shape[1]}")

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return found


def dense_shape(x, weight) -> tuple[int, int] | None:
    """(K, N) when ``weight`` is a constant fp32 (K, N) and ``x`` an fp32 tensor whose last dim is K."""
    import tvm
    from tvm import relax, tirx

    if not isinstance(weight, tvm.ir.GenericConst):
        return None
    w_info, x_info = weight.ty, x.ty
    if not isinstance(x_info, relax.TensorType) or x_info.dtype != "float32" or x_info.ndim < 2:
        return None
    if w_info.dtype != "float32" or w_info.ndim != 2:
        return None
    k, n = (int(v) for v in weight.value.shape)  # the tensor's shape, without a numpy copy of it
    shape = x_info.shape
    last = shape.values[-1] if isinstance(shape, relax.ShapeExpr) else None
    return (k, n) if isinstance(last, tirx.IntImm) and int(last) == k else None


__all__ = ["dense_layers", "dense_shape"]

"""GELU as TIR expressions for hand-written GEMM epilogues: vectorizable rational polynomials.

The same approximations TVM's ``FastMathTransform`` puts into the fp32 pipeline's GELU (Eigen's
``erf`` and ``tanh``: an odd polynomial over an even one, on a clamped input), within 5e-7 of the
exact functions in fp32, so a fused epilogue computes what the separate GELU kernel would. LLVM
would otherwise call libm once per lane.
"""

from __future__ import annotations

import math

# highest power first; numerator odd (times x), denominator even
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
           1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)
GELU_KINDS = ("erf", "tanh")  # nn.gelu, nn.gelu_tanh (GPT-2's "gelu_new")


def _rational(x, bound: float, numerator, denominator):
    from tvm.script import tirx as T

    x = T.max(T.min(x, T.float32(bound)), T.float32(-bound))
    x2 = x * x
    p = T.float32(numerator[0])
    for c in numerator[1:]:
        p = p * x2 + T.float32(c)
    q = T.float32(denominator[0])
    for c in denominator[1:]:
        q = q * x2 + T.float32(c)
    return x * p / q


def gelu(x, kind: str):
    """GELU of an fp32 TIR expression: ``0.5 x (1 + erf(x / sqrt 2))``, or the tanh form
    ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))``."""
    from tvm.script import tirx as T

    if kind == "erf":
        inner = _rational(x * T.float32(1.0 / math.sqrt(2.0)), 4.0, _ERF_P, _ERF_Q)
    elif kind == "tanh":
        inner = _rational(T.float32(math.sqrt(2.0 / math.pi)) * (x + T.float32(0.044715) * x * x * x),
                          9.0, _TANH_P, _TANH_Q)
    else:
        raise ValueError(f"GELU kind {kind!r} is not one of {GELU_KINDS}.")
    return T.float32(0.5) * x * (T.float32(1.0) + inner)


# Relax op -> its GELU form: nn.gelu the erf form, nn.gelu_tanh (GPT-2's) the tanh form
GELU_OPS = {"relax.nn.gelu": "erf", "relax.nn.gelu_tanh": "tanh"}
# Relax op -> its epilogue form, for lowerings that fuse the GELU after a dense layer (int8.py)
GELU = {op: (lambda x, kind=kind: gelu(x, kind)) for op, kind in GELU_OPS.items()}

__all__ = ["GELU", "GELU_KINDS", "GELU_OPS", "gelu"]

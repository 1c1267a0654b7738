"""GELU as plain TIR arithmetic, for kernels that apply it in their epilogue (int8.py).

LLVM lowers a vector ``erf`` or ``tanh`` to one libm call per lane; these rational
approximations (Eigen's, which TVM's ``FastMathTransform`` also uses for the fp32 kernels) are
multiply-adds and one division, so the epilogue stays vectorized. Both are within a few fp32 ulp
of the exact functions on the whole real line (clamped where they saturate).
"""

from __future__ import annotations

import math

# erf(x) ~ x P(x^2) / Q(x^2) on [-4, 4] (|erf| = 1 to fp32 precision beyond)
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)
# tanh(x) ~ x P(x^2) / Q(x^2) on [-9, 9]
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
           1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def _horner(x2, coefficients):
    from tvm.script import tirx as T

    value = T.float32(coefficients[0])
    for c in coefficients[1:]:
        value = value * x2 + T.float32(c)
    return value


def _odd_rational(x, bound: float, p, q):
    from tvm.script import tirx as T

    x = T.max(T.min(x, T.float32(bound)), T.float32(-bound))
    x2 = x * x
    return x * _horner(x2, p) / _horner(x2, q)


def gelu_erf(x):
    """``0.5 x (1 + erf(x / sqrt 2))`` (ONNX Gelu, torch's default)."""
    from tvm.script import tirx as T

    erf = _odd_rational(x * T.float32(1.0 / math.sqrt(2.0)), 4.0, _ERF_P, _ERF_Q)
    return T.float32(0.5) * x * (T.float32(1) + erf)


def gelu_tanh(x):
    """``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (GPT-2's GELU)."""
    from tvm.script import tirx as T

    inner = T.float32(math.sqrt(2.0 / math.pi)) * (x + T.float32(0.044715) * x * x * x)
    return T.float32(0.5) * x * (T.float32(1) + _odd_rational(inner, 9.0, _TANH_P, _TANH_Q))


GELU = {"relax.nn.gelu": gelu_erf, "relax.nn.gelu_tanh": gelu_tanh}  # by the Relax op they replace

__all__ = ["GELU", "gelu_erf", "gelu_tanh"]

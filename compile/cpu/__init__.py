"""CPU schedules for TVM's Relax pipeline: the GEMM schedule, weight packing, fast math, row rules.

``pipeline`` assembles them into the pass pipeline every CPU build uses; ``matmul`` is the
register-blocked GEMM schedule; ``weights`` packs constant weights at build time; ``fast_math``
swaps libm calls for vectorizable polynomials; ``rules`` schedules softmax, layer norm, transposes
and whatever else is left. ``--precision bf16``: ``precision`` resolves the target, ``bf16`` puts
the dense layers on ``amx``'s AMX bf16 GEMM (tile steps in ``amx_tiles``) or on ``dpbf16``'s
AVX512-BF16 ``vdpbf16ps`` GEMM. ``--precision int8``: ``int8_layers`` puts them on ``int8``'s
VNNI/AVX2 GEMM or, where the CPU has AMX-INT8, on ``amx_int8``'s ``tdpbssd`` GEMM.
"""

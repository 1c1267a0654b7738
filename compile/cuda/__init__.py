"""The CUDA half of the compile stage: GPU schedules, nvcc, fatbins and the packed library.

``pipeline`` is the Relax pipeline for CUDA targets (``rules`` schedules every kernel, ``precision``
casts to fp16); ``nvcc`` finds and runs the CUDA compiler; ``fatbin`` reads what a fatbin holds;
``library`` swaps the CUDA module's source for a fatbin in an exported library; ``export`` ties
those together for ``tvm_build``.
"""

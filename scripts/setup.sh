#!/usr/bin/env bash
# Set up forgeline in ./.venv on a fresh CPU machine. Usage: scripts/setup.sh [--editable]
# The CPU build of torch is pinned first: a bare `torch` requirement would pull a CUDA build of
# several GB. The cuda-build extra brings NVIDIA's nvcc from PyPI, so CUDA builds compile real
# fatbins (and the CUDA tests run) on a machine without a CUDA toolkit. apache-tvm-ffi is pinned in pyproject.toml (0.1.15 segfaults in tvm.ir.save_json).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
if [ "${1:-}" = "--editable" ]; then
  python -m pip install -q -e ".[test,plot,cuda-build]"
else
  # A regular (non-editable) install, so the tests exercise the package as users get it.
  python -m pip install -q ".[test,plot,cuda-build]"
fi
echo "forgeline installed in $(pwd)/.venv"

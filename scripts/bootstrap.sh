#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project with its test extras.
# torch is installed first and on its own: on a machine without a GPU we take the CPU build
# (torch==2.13.0, set JANUS_TORCH_SPEC to change it); with a GPU, install your CUDA torch into .venv
# before running this, or set JANUS_TORCH_SPEC. An installed torch is never replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ required" >&2; exit 1; }
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  .venv/bin/python -m pip install -q "${JANUS_TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[test]"

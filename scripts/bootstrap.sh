#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project with its test extras, saying what it does at each
# step (a fresh install takes a few minutes; pip's own lines show what it is fetching).
#
# torch is installed first and on its own, because which build you get matters:
#   - an installed torch is never replaced: with a GPU, install your CUDA build of torch into .venv first;
#   - otherwise JANUS_TORCH_SPEC is installed (default torch==2.13.0). On PyPI that spec is a CUDA build of
#     several GB on Linux; on a machine without a GPU take PyTorch's CPU build instead:
#         JANUS_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/bootstrap.sh
#     (JANUS_TORCH_INDEX is passed to pip as --index-url for the torch step only). This project's CI
#     machines have the CPU build of torch 2.13.0 on disk, which plain pip finds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step() { printf '==> %s\n' "$*"; }
# pip without -q shows each download and build; "already satisfied" lines are noise on a re-run.
pip_install() { .venv/bin/python -m pip install --progress-bar off "$@" 2>&1 | { grep -v '^Requirement already satisfied' || true; }; }

if [ ! -x .venv/bin/python ]; then
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ required" >&2; exit 1; }
  step "creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
if .venv/bin/python -c 'import torch' 2>/dev/null; then
  step "torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') is installed; keeping it"
else
  spec=${JANUS_TORCH_SPEC:-torch==2.13.0}
  if [ -n "${JANUS_TORCH_INDEX:-}" ]; then
    step "installing $spec from $JANUS_TORCH_INDEX"
    pip_install --index-url "$JANUS_TORCH_INDEX" "$spec"
  else
    step "installing $spec (set JANUS_TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU build)"
    pip_install "$spec"
  fi
fi
step "installing janus-bot and its test tools into .venv (discord.py, transformers, SQLAlchemy, pytest, ...)"
pip_install -e ".[test]"
.venv/bin/janus-bot --help >/dev/null
step "done: .venv/bin/janus-bot is ready"

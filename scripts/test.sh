#!/usr/bin/env bash
# Installs (scripts/bootstrap.sh) and runs the whole test suite offline, with one torch thread, plus ruff (lint and format)
# and mypy (configured in pyproject.toml: bot/ and janus_engine/, strict on the seams).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Installs (scripts/bootstrap.sh) and runs the offline demo: a Discord emulator, the real bot and a tiny
# random Janus model, playing a scripted session. No token and no network needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
.venv/bin/janus-bot demo "$@"

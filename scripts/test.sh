#!/usr/bin/env bash
# Installs (scripts/bootstrap.sh) and runs the whole test suite offline, with one torch thread, plus ruff (lint and format)
# and mypy (configured in pyproject.toml: bot/ and janus_engine/, strict on the seams), on SQLite and on a
# throwaway PostgreSQL server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The store tests and one bot end-to-end test also run on PostgreSQL: start a throwaway server on
# 127.0.0.1 (scripts/postgres.sh; installs Debian's package when root). Without one those tests skip,
# unless JANUS_REQUIRE_POSTGRES=1 (CI), which makes a server that does not start a failure.
if [ -z "${JANUS_TEST_POSTGRES_URL:-}" ]; then
  pgdir=$(mktemp -d)
  if url=$(bash scripts/postgres.sh start "$pgdir"); then
    export JANUS_TEST_POSTGRES_URL=$url
    trap 'bash scripts/postgres.sh stop "$pgdir"' EXIT
    echo "==> PostgreSQL for the tests: $url"
  elif [ "${JANUS_REQUIRE_POSTGRES:-}" = 1 ]; then
    echo "PostgreSQL did not start and JANUS_REQUIRE_POSTGRES=1" >&2
    exit 1
  else
    rm -rf "$pgdir"
    echo "==> no PostgreSQL server: its tests are skipped (see scripts/postgres.sh)"
  fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Install everything the tests need and run the whole suite (lint, then pytest).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k e2e -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_system_packages test
ensure_postgres
ensure_venv "test"
export PATH="$PWD/$VENV/bin:$PATH"

say "ruff"
ruff check .
ruff format --check .
say "pytest"
exec pytest -q "$@"

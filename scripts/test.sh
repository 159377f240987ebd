#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite plus the linter. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${CORESTREAM_VENV:-.venv}/bin/activate"
ruff check .
python -m pytest "$@"

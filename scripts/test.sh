#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite plus the linter. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The compose-file check (tests/test_compose.py) needs a compose CLI, not an engine: Debian's docker-compose.
if ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test: installing Debian's docker-compose (to validate docker-compose.yml)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose; } >/dev/null 2>&1 \
        || echo "test: warning: could not install docker-compose; its check will be skipped"
fi
. "${CORESTREAM_VENV:-.venv}/bin/activate"
ruff check .
python -m pytest "$@"

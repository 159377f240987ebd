#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite plus the linter. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The compose-file check (tests/test_compose.py) needs a compose CLI, not an engine: as root with apt-get, this
# installs Debian's docker-compose (see README); elsewhere that one check is skipped.
if ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test: installing Debian's docker-compose with apt-get (to validate docker-compose.yml)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose; } >/dev/null 2>&1 \
            || echo "test: warning: could not install docker-compose; its check will be skipped"
    else
        echo "test: no docker compose CLI (installed only as root with apt-get): its check will be skipped"
    fi
fi
. "${CORESTREAM_VENV:-.venv}/bin/activate"
ruff check .
python -m pytest "$@"

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
# The alerting-rule tests (tests/test_alerts.py) need promtool, from Debian's prometheus package. Only the tool is
# wanted: the Prometheus server that the package starts under systemd is stopped and disabled again.
if ! command -v promtool >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test: installing Debian's prometheus package (for promtool, to test config/alerts.yml)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            prometheus; } >/dev/null 2>&1 \
            || echo "test: warning: could not install prometheus; the promtool tests of the alert rules will be skipped"
        if command -v systemctl >/dev/null && systemctl is-enabled --quiet prometheus 2>/dev/null; then
            systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
    else
        echo "test: no promtool, and no apt-get as root to install it: the promtool tests of the alert rules will be skipped"
    fi
fi
. "${CORESTREAM_VENV:-.venv}/bin/activate"
ruff check .
python -m pytest "$@"

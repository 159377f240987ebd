#!/usr/bin/env bash
# Create .venv and install corestream with its test and demo extras. Safe to run again: it is a no-op
# when nothing changed. CPU hosts get the CPU build of torch (torch==2.13.0); on a GPU host set
# CORESTREAM_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${CORESTREAM_VENV:-.venv}
TORCH_SPEC=${CORESTREAM_TORCH:-torch==2.13.0}
PIP_ARGS=(--disable-pip-version-check -q)
[ -d /opt/wheels ] && PIP_ARGS+=(--find-links /opt/wheels)

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.corestream-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "setup: installing dependencies into $VENV (first run takes a few minutes)"
"$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" $TORCH_SPEC
"$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" -e ".[test,demo]"
echo "$want" > "$stamp"

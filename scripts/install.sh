#!/usr/bin/env bash
# Install llava-beyond and its test/train dependencies into the current Python.
# torch is pinned to the CPU build that lies on disk here unless TORCH_SPEC says otherwise
# (on a GPU node: TORCH_SPEC="torch" or the CUDA build you want).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
: "${TORCH_SPEC:=torch==2.13.0}"
: "${EXTRAS:=train,dev,demo,contrastive}"
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
"$PY" -m pip install -q -e ".[${EXTRAS}]"

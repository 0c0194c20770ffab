#!/usr/bin/env bash
# The demo: tiny local models + the synthetic spatial benchmark, trained on CPU through the real
# stage scripts (vanilla, multiNorm, compression, 2D RoPE), evaluated, tabulated and plotted.
#
#   bash scripts/demo.sh [--quick] [--llm tiny|smollm2] [--output_dir DIR] [--variants vanilla,rope2d] [--threads N]
#
# Installs the package first (scripts/install.sh) unless LLAVA_SKIP_INSTALL=1. Writes
# DIR/ablation.md, DIR/ablation.png (DIR defaults to ./demo_output). The logic is in scripts/demo_ablation.py.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [[ "${LLAVA_SKIP_INSTALL:-0}" != "1" ]]; then
    bash "${REPO_ROOT}/scripts/install.sh"
fi
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${PY}" "${REPO_ROOT}/scripts/demo_ablation.py" "$@"

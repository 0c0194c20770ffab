#!/usr/bin/env bash
# Run a stage script on every node of the current SLURM allocation (one DeepSpeed launcher per node).
#   bash scripts/slurm/launch.sh [--dry-run] [--gpus-per-node N] [--port P] -- bash scripts/v1_5/finetune.sh [flags]
# The stage script's environment overrides (MODEL_NAME, DATA_PATH, ...) pass through; see llava/utils/slurm.py.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON:-python3}" -m llava.utils.slurm "$@"

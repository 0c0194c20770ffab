#!/usr/bin/env bash
# The GPU check in one command (logic in scripts/gpu/check.py; see scripts/gpu/README.md).
#   bash scripts/gpu/check.sh [--out DIR] [--device auto|cuda|cpu] [--quick]
# Output: $OUT if set, else --out DIR, else ./gpu_check_out. Exit 0 when every part passed.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "${HERE}/check.py" "$@"

#!/usr/bin/env bash
# The test command: install what is needed, lint, then run the whole suite (slow e2e tests included).
# Pass pytest arguments to narrow it, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
bash scripts/install.sh
"$PY" -m ruff check llava tests scripts
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" -m pytest -q -p no:cacheprovider --durations=15 "$@"  # the 15 slowest tests: where the suite time goes

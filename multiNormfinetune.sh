#!/usr/bin/env bash
# +Normalize +Multilayer, stage 2: the LLaVA-1.5 finetune recipe (scripts/v1_5/finetune.sh) with
# --normalize_projector and --use_multilayer_features in the paper's styles (NORM_STYLE=reference:
# per-channel RMSNorm, clip 1.22, x 0.83; MULTILAYER_POST_NORM=True: the tower's post-layernorm per
# layer, CLS dropped); NORM_STYLE=scalar MULTILAYER_POST_NORM=False give this fork's variant.
# Starts from multiNormpretrain.sh's projector (same RUN_NAME). Same environment overrides and CPU
# mode; other flags are forwarded. STAGE2_SCRIPT=finetune_lora.sh runs the LoRA recipe instead of the full
# finetune (scripts/v1_5/finetune_lora.sh, its LORA_R/LORA_ALPHA/MM_PROJECTOR_LR overrides apply).
set -euo pipefail
: "${RUN_NAME:=llava-v1.5-13b-multinorm}"
: "${MULTILAYER_SELECT:=12,16,20,24}"
: "${NORM_STYLE:=reference}"
: "${MULTILAYER_POST_NORM:=True}"
: "${STAGE2_SCRIPT:=finetune.sh}"
case "${STAGE2_SCRIPT}" in
    finetune.sh|finetune_lora.sh) ;;
    *) echo "error: STAGE2_SCRIPT=${STAGE2_SCRIPT}: use finetune.sh or finetune_lora.sh" >&2; exit 2 ;;
esac
export RUN_NAME
exec bash "$(dirname "${BASH_SOURCE[0]}")/scripts/v1_5/${STAGE2_SCRIPT}" \
    --normalize_projector True \
    --mm_norm_style "${NORM_STYLE}" \
    --use_multilayer_features True \
    --mm_multilayer_select "${MULTILAYER_SELECT}" \
    --mm_multilayer_post_norm "${MULTILAYER_POST_NORM}" \
    "$@"

#!/usr/bin/env bash
# LLaVA-1.5 stage 2 with LoRA (r=128, alpha=256) on the LLM; the projector trains at MM_PROJECTOR_LR.
# Every setting is an environment variable; extra flags are forwarded.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

: "${MODEL_NAME:=${LLM_NAME}}"
: "${PRETRAIN_MM_MLP_ADAPTER:=${CHECKPOINT_ROOT}/${RUN_NAME}-pretrain/mm_projector.bin}"
: "${DATA_PATH:=${FINETUNE_DATA_ROOT}/llava_v1_5_mix665k.json}"
: "${IMAGE_FOLDER:=${FINETUNE_DATA_ROOT}}"
: "${OUTPUT_DIR:=${CHECKPOINT_ROOT}/${RUN_NAME}-lora}"
: "${DS_CONFIG:=${REPO_ROOT}/scripts/zero3.json}"
: "${BATCH_SIZE:=16}"
: "${GRAD_ACCUM:=1}"
: "${LR:=2e-4}"
: "${MM_PROJECTOR_LR:=2e-5}"
: "${LORA_R:=128}"
: "${LORA_ALPHA:=256}"
: "${SAVE_STEPS:=50000}"

llava_launch \
    --lora_enable True --lora_r "${LORA_R}" --lora_alpha "${LORA_ALPHA}" \
    --mm_projector_lr "${MM_PROJECTOR_LR}" \
    --version v1 \
    --pretrain_mm_mlp_adapter "${PRETRAIN_MM_MLP_ADAPTER}" \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    "$@"

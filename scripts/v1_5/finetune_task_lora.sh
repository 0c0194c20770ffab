#!/usr/bin/env bash
# LoRA fine-tune of a finished LLaVA-1.5 model on your own task data (ZeRO-3).
# Set DATA_PATH / IMAGE_FOLDER to your data; every setting is an environment variable.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

: "${MODEL_NAME:=liuhaotian/llava-v1.5-13b}"
: "${DATA_PATH:=${FINETUNE_DATA_ROOT}/llava_v1_5_mix665k.json}"
: "${IMAGE_FOLDER:=${FINETUNE_DATA_ROOT}}"
: "${OUTPUT_DIR:=${CHECKPOINT_ROOT}/${RUN_NAME}-task-lora}"
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
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    "$@"

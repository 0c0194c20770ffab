#!/usr/bin/env bash
# LLaVA-1.5 stage 2: full fine-tune on the 665K instruction mix (ZeRO-3, template "v1"),
# starting from the stage-1 projector. Every setting is an environment variable; extra flags are forwarded.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

: "${MODEL_NAME:=${LLM_NAME}}"
: "${PRETRAIN_MM_MLP_ADAPTER:=${CHECKPOINT_ROOT}/${RUN_NAME}-pretrain/mm_projector.bin}"
: "${DATA_PATH:=${FINETUNE_DATA_ROOT}/llava_v1_5_mix665k.json}"
: "${IMAGE_FOLDER:=${FINETUNE_DATA_ROOT}}"
: "${OUTPUT_DIR:=${CHECKPOINT_ROOT}/${RUN_NAME}}"
: "${DS_CONFIG:=${REPO_ROOT}/scripts/zero3.json}"
: "${BATCH_SIZE:=16}"
: "${GRAD_ACCUM:=1}"
: "${LR:=2e-5}"
: "${SAVE_STEPS:=50000}"

llava_launch \
    --version v1 \
    --pretrain_mm_mlp_adapter "${PRETRAIN_MM_MLP_ADAPTER}" \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    "$@"

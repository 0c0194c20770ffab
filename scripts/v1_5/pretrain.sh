#!/usr/bin/env bash
# LLaVA-1.5 stage 1: train only the projector on LCS-558K captions (ZeRO-2, template "plain").
# Every setting is an environment variable (see _common.sh); extra flags are forwarded.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

: "${MODEL_NAME:=${LLM_NAME}}"
: "${DATA_PATH:=${PRETRAIN_DATA_ROOT}/blip_laion_cc_sbu_558k.json}"
: "${IMAGE_FOLDER:=${PRETRAIN_DATA_ROOT}/images}"
: "${OUTPUT_DIR:=${CHECKPOINT_ROOT}/${RUN_NAME}-pretrain}"
: "${DS_CONFIG:=${REPO_ROOT}/scripts/zero2.json}"
: "${BATCH_SIZE:=32}"
: "${GRAD_ACCUM:=1}"
: "${LR:=1e-3}"
: "${SAVE_STEPS:=24000}"

llava_launch \
    --version plain \
    --tune_mm_mlp_adapter True \
    "$@"

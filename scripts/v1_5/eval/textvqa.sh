#!/usr/bin/env bash
# TextVQA val (upstream layout under EVAL_ROOT/textvqa): answers + soft accuracy.
source "$(dirname "${BASH_SOURCE[0]}")/_eval_common.sh"
: "${TEXTVQA_DIR:=${EVAL_ROOT}/textvqa}"
: "${ANSWERS:=${TEXTVQA_DIR}/answers/${MODEL_ID}.jsonl}"
run_chunks llava.eval.model_vqa_loader "${ANSWERS}" --image-folder "${TEXTVQA_DIR}/train_images" \
    --question-file "${TEXTVQA_DIR}/llava_textvqa_val_v051_ocr.jsonl" --batch-size "${BATCH_SIZE}"
"${PYTHON}" -m llava.eval.eval_textvqa --annotation-file "${TEXTVQA_DIR}/TextVQA_0.5.1_val.json" --result-file "${ANSWERS}"

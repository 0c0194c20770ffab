#!/usr/bin/env bash
# POPE (upstream layout under EVAL_ROOT/pope): answers + accuracy/precision/recall/F1/yes-ratio per category.
source "$(dirname "${BASH_SOURCE[0]}")/_eval_common.sh"
: "${POPE_DIR:=${EVAL_ROOT}/pope}"
: "${ANSWERS:=${POPE_DIR}/answers/${MODEL_ID}.jsonl}"
run_chunks llava.eval.model_vqa_loader "${ANSWERS}" --image-folder "${POPE_DIR}/val2014" \
    --question-file "${POPE_DIR}/llava_pope_test.jsonl" --batch-size "${BATCH_SIZE}"
"${PYTHON}" -m llava.eval.eval_pope --annotation-dir "${POPE_DIR}/coco" --question-file "${POPE_DIR}/llava_pope_test.jsonl" \
    --result-file "${ANSWERS}"

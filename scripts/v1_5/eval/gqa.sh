#!/usr/bin/env bash
# GQA testdev-balanced (upstream layout under EVAL_ROOT/gqa): answers + exact match; also writes GQA's predictions file.
source "$(dirname "${BASH_SOURCE[0]}")/_eval_common.sh"
: "${GQA_DIR:=${EVAL_ROOT}/gqa}"
: "${SPLIT:=llava_gqa_testdev_balanced}"
: "${ANSWERS:=${GQA_DIR}/answers/${SPLIT}/${MODEL_ID}.jsonl}"
run_chunks llava.eval.model_vqa_loader "${ANSWERS}" --image-folder "${GQA_DIR}/data/images" \
    --question-file "${GQA_DIR}/${SPLIT}.jsonl" --batch-size "${BATCH_SIZE}"
"${PYTHON}" -m llava.eval.eval_gqa --annotation-file "${GQA_DIR}/data/testdev_balanced_questions.json" \
    --result-file "${ANSWERS}" --predictions-out "${GQA_DIR}/data/testdev_balanced_predictions.json"

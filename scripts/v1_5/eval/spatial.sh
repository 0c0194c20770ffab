#!/usr/bin/env bash
# Spatial benchmark (llava.data.spatial): generate answers, then accuracy per category + majority baseline.
#   CKPT=... SPATIAL_DIR=demo_output/data bash scripts/v1_5/eval/spatial.sh
source "$(dirname "${BASH_SOURCE[0]}")/_eval_common.sh"
: "${SPATIAL_DIR:=./playground/data/eval/spatial}"
: "${ANSWERS:=${SPATIAL_DIR}/answers/${MODEL_ID}.jsonl}"
run_chunks llava.eval.model_vqa_loader "${ANSWERS}" --image-folder "${SPATIAL_DIR}" \
    --question-file "${SPATIAL_DIR}/test_questions.jsonl" --batch-size "${BATCH_SIZE}" --max_new_tokens 16
"${PYTHON}" -m llava.eval.eval_spatial --annotation-file "${SPATIAL_DIR}/test_answers.jsonl" --result-file "${ANSWERS}" \
    --output-file "${ANSWERS%.jsonl}.metrics.json"

#!/usr/bin/env bash
# ScienceQA-IMG test (upstream layout under EVAL_ROOT/scienceqa): letter answers + multiple-choice accuracy.
source "$(dirname "${BASH_SOURCE[0]}")/_eval_common.sh"
: "${SQA_DIR:=${EVAL_ROOT}/scienceqa}"
: "${ANSWERS:=${SQA_DIR}/answers/${MODEL_ID}.jsonl}"
run_chunks llava.eval.model_vqa_science "${ANSWERS}" --image-folder "${SQA_DIR}/images/test" \
    --question-file "${SQA_DIR}/llava_test_CQM-A.json" --single-pred-prompt
"${PYTHON}" -m llava.eval.eval_science_qa --base-dir "${SQA_DIR}" --result-file "${ANSWERS}" --split test \
    --output-file "${ANSWERS%.jsonl}_output.json" --output-result "${ANSWERS%.jsonl}_result.json"

#!/usr/bin/env bash
# Shared part of the eval wrappers (sourced): defaults overridable from the environment and a
# chunked runner. CKPT (model path), MODEL_BASE, CONV_MODE, CHUNKS (parallel processes, one per GPU
# when GPUS lists them), EVAL_ROOT (upstream's ./playground/data/eval), PYTHON.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
: "${PYTHON:=python3}"
: "${CKPT:=./checkpoints/llava-v1.5-13b}"
: "${MODEL_BASE:=}"
: "${CONV_MODE:=vicuna_v1}"
: "${EVAL_ROOT:=./playground/data/eval}"
: "${GPUS:=${CUDA_VISIBLE_DEVICES:-0}}"
IFS=',' read -ra GPU_LIST <<< "${GPUS}"
: "${CHUNKS:=${#GPU_LIST[@]}}"
: "${BATCH_SIZE:=8}"
MODEL_ID="$(basename "${CKPT}")"

# run_chunks GENERATOR_MODULE ANSWERS_FILE ARGS... : run CHUNKS processes, then merge in chunk order.
run_chunks() {
    local module="$1" answers="$2"; shift 2
    local base_args=(--model-path "${CKPT}" --conv-mode "${CONV_MODE}" --temperature 0)
    [[ -n "${MODEL_BASE}" ]] && base_args+=(--model-base "${MODEL_BASE}")
    local -a parts=() pids=()
    for ((i = 0; i < CHUNKS; i++)); do
        local part="${answers%.jsonl}.chunk${CHUNKS}_${i}.jsonl"
        parts+=("${part}")
        CUDA_VISIBLE_DEVICES="${GPU_LIST[$((i % ${#GPU_LIST[@]}))]}" "${PYTHON}" -m "${module}" "${base_args[@]}" \
            --answers-file "${part}" --num-chunks "${CHUNKS}" --chunk-idx "${i}" "$@" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "${pid}"; done
    bash "${REPO_ROOT}/scripts/v1_5/eval/merge_chunks.sh" "${answers}" "${parts[@]}"
    rm -f "${parts[@]}"
}

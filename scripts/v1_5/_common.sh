#!/usr/bin/env bash
# Shared part of the LLaVA-1.5 stage scripts: defaults (every one overridable from the
# environment), device/precision handling and the DeepSpeed launch. Sourced, not run.
#
#   DEVICE=cpu      adds --use_cpu True, drops bf16/tf32, exports DS_ACCELERATOR=cpu
#   NUM_GPUS=N      processes per node (deepspeed --num_gpus); default: all GPUs (1 on CPU)
#   HOSTFILE=path   multi-node: passed to deepspeed --hostfile (see README)
#   NODE_RANK=k     this node's rank: deepspeed --no_ssh --node_rank k (one launcher per node, e.g. under
#                   SLURM: scripts/slurm/launch.sh sets it with HOSTFILE, MASTER_ADDR and MASTER_PORT)
#   NUM_NODES, MASTER_ADDR, MASTER_PORT, INCLUDE   passed to deepspeed when set; without MASTER_PORT
#                   (and HOSTFILE) a single-node run takes a free port instead of DeepSpeed's 29500
#   LAUNCHER        default "deepspeed"
#   SEED            --seed (default 42, the Trainer's): modules, data order and dropout follow it
#   EVAL_DATA_PATH  validation data (LLaVA JSON): --eval_data_path, evaluated every EVAL_STEPS steps
#                   (default 100) and at the end; EVAL_IMAGE_FOLDER (default IMAGE_FOLDER) its images
#   PACKING=True    --packing True: samples packed into rows of MODEL_MAX_LENGTH tokens (each attends only
#                   to itself); BATCH_SIZE then counts rows (packs), not samples
#   DATA_STORE_DIR  --data_store_dir: DATA_PATH converted once into a memory-mapped store there (one copy
#                   per node instead of a parsed JSON per rank); default off
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

: "${DEVICE:=gpu}"
: "${LAUNCHER:=deepspeed}"
: "${CHECKPOINT_ROOT:=./checkpoints}"
: "${RUN_NAME:=llava-v1.5-13b}"
: "${LLM_NAME:=lmsys/vicuna-13b-v1.5}"
: "${VISION_TOWER:=openai/clip-vit-large-patch14-336}"
: "${PROJECTOR_TYPE:=mlp2x_gelu}"
: "${SELECT_LAYER:=-2}"
: "${MODEL_MAX_LENGTH:=2048}"
: "${EPOCHS:=1}"
: "${MAX_STEPS:=-1}"
: "${WARMUP_RATIO:=0.03}"
: "${WEIGHT_DECAY:=0.}"
: "${LR_SCHEDULER:=cosine}"
: "${SAVE_TOTAL_LIMIT:=1}"
: "${LOGGING_STEPS:=1}"
: "${NUM_WORKERS:=4}"
: "${GRADIENT_CHECKPOINTING:=True}"
: "${REPORT_TO:=none}"
: "${PACKING:=False}"
: "${EVAL_BATCH_SIZE:=4}"
: "${SEED:=42}"
: "${PRETRAIN_DATA_ROOT:=./playground/data/LLaVA-Pretrain}"
: "${FINETUNE_DATA_ROOT:=./playground/data}"

# llava_launch FLAG... : run llava/train/train_mem.py under the launcher with the shared flags,
# then the stage's flags, then whatever the user passed to the stage script (last one wins).
llava_launch() {
    local -a launcher_args=() precision_args=() eval_args=(--eval_strategy no) store_args=()
    if [[ -n "${EVAL_DATA_PATH:-}" ]]; then
        eval_args=(--eval_strategy steps --eval_steps "${EVAL_STEPS:-100}" --eval_data_path "${EVAL_DATA_PATH}"
            --eval_image_folder "${EVAL_IMAGE_FOLDER:-${IMAGE_FOLDER}}")
    fi
    if [[ -n "${DATA_STORE_DIR:-}" ]]; then
        store_args=(--data_store_dir "${DATA_STORE_DIR}")
    fi
    if [[ "${DEVICE}" == "cpu" ]]; then
        export DS_ACCELERATOR=cpu
        : "${NUM_GPUS:=1}"
        precision_args=(--use_cpu True)
    else
        precision_args=(--bf16 True --tf32 True)
    fi
    [[ -n "${HOSTFILE:-}" ]] && launcher_args+=(--hostfile "${HOSTFILE}")
    [[ -n "${NUM_NODES:-}" ]] && launcher_args+=(--num_nodes "${NUM_NODES}")
    [[ -n "${NUM_GPUS:-}" ]] && launcher_args+=(--num_gpus "${NUM_GPUS}")
    [[ -n "${INCLUDE:-}" ]] && launcher_args+=(--include "${INCLUDE}")
    [[ -n "${MASTER_ADDR:-}" ]] && launcher_args+=(--master_addr "${MASTER_ADDR}")
    [[ -n "${NODE_RANK:-}" ]] && launcher_args+=(--no_ssh --node_rank "${NODE_RANK}")
    if [[ -z "${MASTER_PORT:-}" && -z "${HOSTFILE:-}" ]]; then
        # single node without MASTER_PORT: a free port, so two runs on one machine do not both take 29500
        MASTER_PORT="$("${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    fi
    [[ -n "${MASTER_PORT:-}" ]] && launcher_args+=(--master_port "${MASTER_PORT}")

    local -a cmd=("${LAUNCHER}" "${launcher_args[@]}" "${REPO_ROOT}/llava/train/train_mem.py"
        --deepspeed "${DS_CONFIG}"
        --model_name_or_path "${MODEL_NAME}"
        --vision_tower "${VISION_TOWER}"
        --mm_projector_type "${PROJECTOR_TYPE}"
        --mm_vision_select_layer "${SELECT_LAYER}"
        --mm_use_im_start_end False
        --mm_use_im_patch_token False
        --data_path "${DATA_PATH}"
        --image_folder "${IMAGE_FOLDER}"
        --output_dir "${OUTPUT_DIR}"
        --num_train_epochs "${EPOCHS}"
        --max_steps "${MAX_STEPS}"
        --per_device_train_batch_size "${BATCH_SIZE}"
        --per_device_eval_batch_size "${EVAL_BATCH_SIZE}"
        --gradient_accumulation_steps "${GRAD_ACCUM}"
        "${eval_args[@]}" "${store_args[@]}"
        --save_strategy steps
        --save_steps "${SAVE_STEPS}"
        --save_total_limit "${SAVE_TOTAL_LIMIT}"
        --learning_rate "${LR}"
        --weight_decay "${WEIGHT_DECAY}"
        --warmup_ratio "${WARMUP_RATIO}"
        --lr_scheduler_type "${LR_SCHEDULER}"
        --logging_steps "${LOGGING_STEPS}"
        --model_max_length "${MODEL_MAX_LENGTH}"
        --gradient_checkpointing "${GRADIENT_CHECKPOINTING}"
        --dataloader_num_workers "${NUM_WORKERS}"
        --lazy_preprocess True
        --report_to "${REPORT_TO}"
        --packing "${PACKING}"
        --seed "${SEED}"
        "${precision_args[@]}"
        "$@")
    echo "[llava] ${cmd[*]}" >&2
    "${cmd[@]}"
}

#!/usr/bin/env bash
# Three-stage training (seed 002): 1 general alignment -> 2 domain alignment -> 3 domain instruction tuning.
# Thin wrapper over llava/workflows/three_stage.py; every setting is an environment variable:
#   STAGES=1,2,3 | 2,3 | ...     which stages to run; each starts from the previous stage's output
#   OUTPUT_ROOT                  one folder per chain prefix: STAGES=1,2,3 writes OUTPUT_ROOT/stage1,
#                                stage1-2, stage1-2-3; STAGES=2,3 writes stage2, stage2-3 (so both chains
#                                share one root); each {model,eval,train.log,stage.json}; plan.json, and
#                                summary.md + validation_loss.png accuracy.png chains.png comparing the chains
#   MODEL_NAME VISION_TOWER      base LLM and CLIP tower (as in scripts/v1_5/*.sh)
#   STAGE1_DATA STAGE1_IMAGES    general caption data (default: LCS-558K under PRETRAIN_DATA_ROOT)
#   DOMAIN_DATA DOMAIN_IMAGES    domain data for stages 2 and 3 (override with STAGE2_DATA, STAGE3_IMAGES, ...)
#   DOMAIN_EVAL_DATA             validation split of stages 2 and 3 (images: DOMAIN_EVAL_IMAGES, default the
#                                stage's); STAGE1_EVAL_DATA, STAGE{N}_EVAL_DATA|_EVAL_IMAGES; EVAL_STEPS (100),
#                                STAGE{N}_EVAL_STEPS: eval_loss/eval_accuracy curves in model/trainer_state.json
#   STAGE{N}_SCRIPT              default pretrain.sh / pretrain.sh / finetune.sh (finetune_lora.sh works too)
#   STAGE{N}_MAX_STEPS _LR _EPOCHS _BATCH_SIZE ...   per-stage settings; STAGE{N}_ARGS extra flags
#   INIT_PROJECTOR INIT_MODEL    what the first stage starts from (STAGES=3 needs INIT_PROJECTOR)
#   EVAL_QUESTIONS EVAL_ANSWERS EVAL_IMAGES EVAL_STAGES   held-out exact match after each stage
#   DEVICE=cpu                   CPU mode, like the stage scripts; DRY_RUN=1 prints the plan
# Reruns: a stage finished with the same settings (command, environment, checksums of its data and of what
# it starts from) is skipped; other settings are refused before anything runs, listing every difference:
# FORCE=1 reruns the changed stage and every later one (FORCE=all: every stage), or use a new OUTPUT_ROOT.
# Extra arguments (add-on flags, e.g. --compression_after_projection True --final_spatial_size 64)
# are forwarded to every stage. See docs/three_stage.md.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON:-python}" -m llava.workflows.three_stage "$@"

#!/usr/bin/env bash
# The evaluation benchmarks on a CUDA GPU in bfloat16, in one run of a few minutes:
#   benchmarks/gpu_check.sh MODEL_FOLDER [OUT_DIR]
# MODEL_FOLDER is a model folder (SmolLM2-135M-Instruct's base_model/ from
# examples/smollm2/prepare.py). Where only its config and tokenizer files are at hand (a GPU
# machine without the 540 MB weights file), set RANDOM_WEIGHTS=1: the weights are drawn at
# random with the same shapes, which takes the same time to run; only the utilities are then
# meaningless. Each benchmark's Markdown table goes to OUT_DIR (default: gpu-results/).
set -euo pipefail
model=${1:?usage: benchmarks/gpu_check.sh MODEL_FOLDER [OUT_DIR]}
out=${2:-gpu-results}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
"$py" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())'
shape=()
if [ "${RANDOM_WEIGHTS:-0}" = 1 ]; then shape=(--random-weights); fi
# (a) overhead, (b) resident swap against reloading, (c) particles/s for K per batch.
"$py" benchmarks/bench_eval.py --model tiny --device cuda --dtype bfloat16 \
  --per-batch 1,4,8,16 --particles 16 2>&1 | tee "$out/bench_eval_tiny.md"
"$py" benchmarks/bench_eval.py --model "$model" "${shape[@]}" --device cuda --dtype bfloat16 \
  --per-batch 1,4,8,16 --particles 16 --examples 32 --batch-size 32 2>&1 \
  | tee "$out/bench_eval_smollm2.md"
# Letter-scored multiple choice: shared rows against one row per option.
"$py" benchmarks/bench_loglik.py --model "$model" "${shape[@]}" --device cuda --dtype bfloat16 \
  --examples 200 --batch-size 32 2>&1 | tee "$out/bench_loglik_smollm2.md"

#!/usr/bin/env bash
# Start a vLLM OpenAI-compatible server for the translation pipeline.
#   MODEL=Qwen/Qwen2.5-Coder-7B-Instruct PORT=8000 GPU_MEMORY_UTILIZATION=0.90 MAX_MODEL_LEN=16384 \
#     scripts/start_vllm.sh
# Extra arguments are passed to `vllm serve` (for example --tensor-parallel-size 2).
# Automatic prefix caching is on (vLLM's default since its v1 engine, said here so it stays on): every request
# starts with what all tasks share, and a repair request extends the one before, so most prompt tokens are cached.
set -euo pipefail
MODEL="${MODEL:-Qwen/Qwen2.5-Coder-7B-Instruct}"
PORT="${PORT:-8000}"
HOST="${HOST:-0.0.0.0}"
GPU_MEMORY_UTILIZATION="${GPU_MEMORY_UTILIZATION:-0.90}"
MAX_MODEL_LEN="${MAX_MODEL_LEN:-16384}"
MAX_NUM_SEQS="${MAX_NUM_SEQS:-64}"
if ! command -v vllm >/dev/null 2>&1; then
  echo "vllm is not installed: pip install vllm (needs a CUDA GPU)" >&2
  exit 1
fi
echo "serving $MODEL on http://$HOST:$PORT/v1 (max-model-len $MAX_MODEL_LEN, gpu-memory-utilization $GPU_MEMORY_UTILIZATION)"
exec vllm serve "$MODEL" \
  --host "$HOST" --port "$PORT" \
  --gpu-memory-utilization "$GPU_MEMORY_UTILIZATION" \
  --max-model-len "$MAX_MODEL_LEN" \
  --max-num-seqs "$MAX_NUM_SEQS" \
  --enable-prefix-caching \
  "$@"

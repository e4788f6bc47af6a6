#!/usr/bin/env bash
# The GPU figures in one go (about 8 minutes on one H100/H200-class GPU):
#   1. decode speed of the LLaMA-7B shape: dense / depth / width at 20% and 35% of the
#      parameters removed, hf and static backends, batch 1-64, fraction of the bandwidth limit
#   2. bf16 CPT and LoRA training tokens/s and MFU on the ~1B Llama shape
#   3. Taylor (width) and FLAP scoring peak memory on the 7B shape, bf16
#   4. FSDP through the Trainer (GPU-only): curves equal to one process without FSDP (a test)
#
#   bash benchmarks/gpu_suite.sh                 # on a GPU machine, from the repository root
#   bash benchmarks/gpu_suite.sh --dry-run       # the same steps, tiny and on the CPU (wiring)
#   OUT=results/gpu_suite bash benchmarks/gpu_suite.sh   # also keep each step's output there
#
# PEAK_TFLOPS (default 989, H100/H200 dense bf16) sets the MFU denominator.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-}
[ -n "$OUT" ] && mkdir -p "$OUT"
export WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false

step() {  # step NAME COMMAND...: print a header, run, keep the output in $OUT/NAME.txt if set
  local name=$1; shift
  echo "== $name: $*"
  local start=$SECONDS
  if [ -n "$OUT" ]; then "$@" 2>&1 | tee "$OUT/$name.txt"; else "$@"; fi
  echo "-- $name took $((SECONDS - start)) s"
}

if [ $DRY = 1 ]; then
  echo "dry run: tiny shapes on the CPU, to check the steps run"
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
  step speed "$PY" benchmarks/bench_speed.py --shape tiny --device cpu \
    --variants dense depth width --fraction 0.8 --backends hf --batch-sizes 1 2 \
    --output-lengths 8 --prompt-len 16 --warmup 1 --repeats 1 --no-compile
  step recovery "$PY" benchmarks/bench_recovery.py --models tiny --steps 2 --warmup 1
  step scoring "$PY" benchmarks/bench_width_scores.py --tiny --criteria taylor,flap --no-naive
  step fsdp "$PY" -m pytest -q tests/test_distributed.py -k "fsdp_training_on_gpus"  # skips
  exit 0
fi

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no GPU: use --dry-run')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

# 1. speed (~4 min): kept fractions 0.8 and 0.65, dense once
SPEED=(--shape llama2_7b --backends hf static --batch-sizes 1 16 64 --output-lengths 128
       --prompt-len 128 --warmup 1 --repeats 3)
step speed_20 "$PY" benchmarks/bench_speed.py "${SPEED[@]}" --variants dense depth width \
  --fraction 0.8
step speed_35 "$PY" benchmarks/bench_speed.py "${SPEED[@]}" --variants depth width --fraction 0.65

# 2. training throughput (~1 min): bf16, seq 1024, batch 8
step recovery "$PY" benchmarks/bench_recovery.py --models llama_1b --methods cpt,lora \
  --steps 10 --warmup 3 --peak-tflops "${PEAK_TFLOPS:-989}"

# 3. scoring memory on the 7B shape (~1 min): torch.cuda.max_memory_allocated
step scoring "$PY" benchmarks/bench_width_scores.py --shape llama2_7b --dtype bfloat16 \
  --criteria taylor,flap --no-naive

# 4. FSDP (~30 s)
step fsdp "$PY" -m pytest -q tests/test_distributed.py -k "fsdp_training_on_gpus"

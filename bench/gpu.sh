#!/usr/bin/env bash
# Every GPU check in one lease: attention backends against the reference (FlashAttention included),
# bf16 training steps of the tokenizer and dynamics model at realistic sizes, throughput and MFU.
# Usage (on a GPU machine, from the repo root): bash bench/gpu.sh [OUT_DIR]
# Prints every figure and writes logs under OUT_DIR (default bench/out/gpu-DATE); copy the figures
# into BENCHMARKS.md with the date and the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/out/gpu-$(date -u +%Y%m%d-%H%M)}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONUNBUFFERED=1

run() {  # run NAME CMD...: log to OUT/NAME.log, keep going on failure, report status
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc in $((SECONDS - t0)) s"
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  $PY -c "import flash_attn; print('flash_attn', flash_attn.__version__)" 2>/dev/null || echo "flash_attn not installed (pip install -e '.[gpu]')"
} | tee "$OUT/env.txt"

# 1. Correctness on the GPU: every attention backend against the reference math, and other GPU tests.
run gpu_tests $PY -m pytest -m gpu -q -p no:cacheprovider tests
# 2. Throughput and MFU, bf16.
run runtime   $PY bench/runtime.py --device cuda --precision bf16
run dynamics  $PY bench/dynamics.py --device cuda
run tokenizer $PY bench/tokenizer.py --device cuda
echo "logs in $OUT"

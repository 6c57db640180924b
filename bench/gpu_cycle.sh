#!/usr/bin/env bash
# Two device calls: `bash bench/gpu_cycle.sh` (GPU facts and the GPU tests), then
# `BENCH_ONLY=1 bash bench/gpu_cycle.sh` (the main job, build latency, forward and backward
# benchmarks). Logs and results land in $OUT (the device tool brings them back).
# Each step has a time limit, so one that hangs still leaves the others' logs.
#   bash bench/gpu_cycle.sh [pytest args...]
set -uo pipefail
OUT=${OUT:-/tmp/conv3d-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  nvcc --version | tail -1
} 2>&1 | tee "$OUT/env.txt"
if [ -z "${BENCH_ONLY:-}" ]; then  # the GPU tests take ~6 min on an H100: a call of their own
  timeout 560 python3 -m pytest tests/gpu -q -rs --durations=8 "$@" 2>&1 | tee "$OUT/pytest_gpu.log" | tail -25
  exit 0
fi
timeout 90 python3 cli.py check 2>&1 | tee "$OUT/check.txt"
timeout 120 python3 bench/bench_build.py --out "$OUT" 2>&1 | tail -12
timeout 290 python3 bench/bench_forward.py --out "$OUT" --dtypes float32 tf32 bfloat16 2>&1 | tail -14
timeout 290 python3 bench/bench_backward.py --out "$OUT" 2>&1 | tail -22

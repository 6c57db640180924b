#!/usr/bin/env bash
# One whole device call: GPU facts, the GPU tests, the main job, build latency and the
# forward benchmark. Logs and results land in $OUT (the device tool brings them back).
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
python3 -m pytest tests/gpu -q -rs --durations=8 "$@" 2>&1 | tee "$OUT/pytest_gpu.log" | tail -25
python3 cli.py check 2>&1 | tee "$OUT/check.txt"
python3 bench/bench_build.py --out "$OUT" 2>&1 | tail -12
python3 bench/bench_forward.py --out "$OUT" --dtypes float32 tf32 bfloat16 2>&1 | tail -14

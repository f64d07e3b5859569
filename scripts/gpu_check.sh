#!/usr/bin/env bash
# GPU checks of the training and data paths (issue 11), on a machine with an NVIDIA GPU:
#   bash scripts/gpu_check.sh            # from the repository root; installs into .venv when missing
#   SMOKE=1 bash scripts/gpu_check.sh    # tiny sizes, any machine: checks that the script runs
# 1. `bench model --train`: TSM-R50, 8 frames, 224 px, bf16 autocast, at batches that fill the GPU:
#    clips/s and MFU (6 x GMACs x clips/s / the detected GPU's dense bf16 peak), then with channels_last
#    and with torch.compile on top, each row beside the plain bf16 baseline of the same batch.
# 2. `bench data`: decode + transform clips/s per CPU core on this node's CPUs for raw Kinetics-like
#    files and their `data prepare` copies, and the cores per GPU that the measured rate implies.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
A=.venv/bin/actionlab
if [ "${SMOKE:-0}" = 1 ]; then
  MODEL=(tsm --tiny --frames 4 --size 32 --num-classes 10 --iters 2); BATCHES=(2); DATA=(--videos 2 --clips 2 --rounds 1)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  MODEL=(tsm --set backbone=resnet50 --frames 8 --size 224 --num-classes 174 --iters 20); BATCHES=(64 128)
  DATA=(--videos 12 --clips 12 --rounds 3)
fi
.venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
for batch in "${BATCHES[@]}"; do
  echo "== training step, batch $batch: bf16 | + channels_last | + channels_last + torch.compile"
  "$A" bench model "${MODEL[@]}" --batch-size "$batch" --train
  "$A" bench model "${MODEL[@]}" --batch-size "$batch" --train --channels-last
  "$A" bench model "${MODEL[@]}" --batch-size "$batch" --train --channels-last --compile
done
echo "== data: decode clips/s per core on this node's CPUs ($(nproc) cores)"
"$A" bench data "${DATA[@]}"

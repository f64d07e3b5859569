#!/usr/bin/env bash
# GPU checks of the training and data paths (issues 11 and 20), on a machine with an NVIDIA GPU:
#   bash scripts/gpu_check.sh            # from the repository root; installs into .venv when missing
#   SMOKE=1 bash scripts/gpu_check.sh    # tiny sizes, any machine: checks that the script runs
# Written to run as is on a GPU machine; GPU-only imports are guarded (a machine without CUDA or
# torchcodec prints the rows it skipped and why). About 8 minutes on an H100 node with 16 cores.
# 1. `bench model --train`: TSM-R50, 8 frames, 224 px, bf16 autocast, at batches that fill the GPU:
#    clips/s and MFU (6 x GMACs x clips/s / the detected GPU's dense bf16 peak), then with channels_last
#    and with torch.compile on top, each row beside the plain bf16 baseline of the same batch.
# 2. `bench data`: decode + transform clips/s per CPU core on this node's CPUs for raw Kinetics-like
#    files, their `data prepare` copies and JPEG frame folders, RGB and YUV 4:2:0 paths, per-stage
#    profile; cores per GPU at the training rate measured in 1 (`--gpu-clips-per-s`).
# 3. `actionlab.bench.gpu`: NVDEC (torchcodec's CUDA decoder) on the raw and prepared files, nvJPEG
#    (torchvision decode_jpeg on cuda) on the frame folders, each beside its CPU decoder, with the CPU
#    cores each kept busy; a pinned batch copied and normalised on the GPU, I420 vs RGB.
# 4. `bench train smoke --data-only`: the loader with one worker per core delivering pinned batches,
#    data.pixels=rgb, yuv420 resized in the loader and yuv420 resized on the GPU (data.resize_on), each
#    beside the bare decode rate of the same prepared files; its training step on such a batch
#    (TSM-R18, 224 px) includes the copy from pinned memory and, for yuv420, the colour conversion
#    (and with resize_on=device the resize) on the GPU: the YUV-on-GPU paths of training, beside RGB.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
A=.venv/bin/actionlab
PY=.venv/bin/python
WORK=$(mktemp -d /tmp/actionlab-gpu-check-XXXXXX)
CORES=$(nproc)
if [ "${SMOKE:-0}" = 1 ]; then
  MODEL=(tsm --tiny --frames 4 --size 32 --num-classes 10 --iters 2); BATCHES=(2); DATA=(--videos 2 --clips 2 --rounds 1)
  GPU_CLIPS=(--clips 2); FEED=(--set schedule.epochs=2 --set data.batch_size=2)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  MODEL=(tsm --set backbone=resnet50 --frames 8 --size 224 --num-classes 174 --iters 20); BATCHES=(64 128)
  DATA=(--videos 12 --clips 12 --rounds 3); GPU_CLIPS=(--clips 48)
  FEED=(--set schedule.epochs=3 --set data.batch_size=32 --set clip.size_px=224 --set clip.resize_px=256)
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
RATE=""
for batch in "${BATCHES[@]}"; do
  echo "== training step, batch $batch: bf16 | + channels_last | + channels_last + torch.compile"
  "$A" bench model "${MODEL[@]}" --batch-size "$batch" --train | tee "$WORK/model_$batch.txt"
  "$A" bench model "${MODEL[@]}" --batch-size "$batch" --train --channels-last
  "$A" bench model "${MODEL[@]}" --batch-size "$batch" --train --channels-last --compile
done
# The plain bf16 rate of the largest batch, for cores per GPU (the built-in 1,500 when it cannot be read).
RATE=$($PY - "$WORK/model_${BATCHES[-1]}.txt" <<'PYEOF' || true
import sys
lines = open(sys.argv[1]).read().splitlines()
header = next(i for i, line in enumerate(lines) if "clips/s" in line.split())
numbers = [t for t in lines[header + 1].split() if t.replace(".", "", 1).isdigit()]
print(numbers[0])
PYEOF
)
echo "== data: decode clips/s per core on this node's CPUs ($CORES cores); GPU rate ${RATE:-1500 (built-in)}"
"$A" bench data "${DATA[@]}" --work-dir "$WORK/data" ${RATE:+--gpu-clips-per-s "$RATE"}
echo "== GPU decoding (NVDEC, nvJPEG) and the batch's colour conversion on the GPU"
$PY -m actionlab.bench.gpu "$WORK/data" "${GPU_CLIPS[@]}"
echo "== loader delivering pinned batches, one worker per core: rgb, yuv420 resized in the loader, yuv420 resized on the GPU (prepared files)"
for variant in "rgb loader" "yuv420 loader" "yuv420 device"; do
  read -r pixels resize <<<"$variant"
  "$A" bench train smoke --data-only --set "data.manifest=$WORK/data/prepared_0/manifest.parquet" \
    --set "data.num_loader_workers=$CORES" --set "data.pixels=$pixels" --set "data.resize_on=$resize" "${FEED[@]}"
done

#!/usr/bin/env bash
# Prepared for the lent GPU machine (device tool): one short run, ~6 minutes.
#   1. training img/s of the seed's backbones, bf16, contiguous vs channels_last (gpu_train.py);
#   2. the data pipeline's img/s with all CPU cores as workers (data_pipeline.py), to see where
#      the data pipeline, not the GPU, becomes the limit.
# Run from the repository root:  bash benchmarks/speed/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/bootstrap.sh
py=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$py -m benchmarks.speed.gpu_train --seconds 15 --batch 64
$py -m benchmarks.speed.data_pipeline --images 4000 --epochs 1 --workers "$(nproc)"

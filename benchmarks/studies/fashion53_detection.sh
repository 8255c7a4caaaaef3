#!/bin/bash
# usage: bash benchmarks/studies/fashion53_detection.sh [NOISE]   (from the repo root; ../shared/data/fashion53.tar.gz)
# Wrong-label detection on a fashion53 label set at --quick's unit, by hand: CE (1 unit, class-balanced) labels the training
# images (+ mirror); pseudo-label with and without the text; AP against the clean labels.
set -e
cd "$(dirname "$0")/../.."
NOISE=${1:-title40}
export R=runs/fashion53-$NOISE-detection
D=$(.venv/bin/python -c "
from benchmarks.datasets import common, fashion53, harness
from pathlib import Path
root=common.find_root(Path('../shared/data/fashion53.tar.gz'), Path.home()/'.cache/webly/data', 'fashion53')
print(fashion53.prepare(root, Path.home()/'.cache/webly/data', '$NOISE'))")
echo "data: $D"
W=.venv/bin/webly
[ -f $R/manifest.parquet ] || $W index $D -o $R/manifest.parquet
[ -f $R/tags/stats.json ] || $W tag $R/manifest.parquet -o $R/tags --workers 2
[ -f $R/ce/model.safetensors ] || $W finetune $R/manifest.parquet -o $R/ce --backbone cifar_resnet9 --img-size 32 --augment pad_crop --in-memory --crop-pct 1.0 --epochs 1 --batch-size 128 --accum-steps 1 --lr 0.1 --weight-decay 0.0005 --schedule cosine --warmup-epochs 0.5 --workers 0 --sampler balanced --export best --no-tensorboard
[ -f $R/train_ce/predict.summary.json ] || $W predict $R/ce $R/manifest.parquet -o $R/train_ce --split train --tta flip --top-k 53 --workers 0 --batch-size 500
$W pseudo-label $R/manifest.parquet $R/train_ce -o $R/pl --text $R/tags --threshold 0.5 --drop-inconsistent
$W pseudo-label $R/manifest.parquet $R/train_ce -o $R/pl_image --threshold 0.5 --drop-inconsistent
.venv/bin/python - <<'PY'
import json, sys
from pathlib import Path
import numpy as np
import pyarrow.parquet as pq
from benchmarks.datasets import common, fashion53, harness
import os; out = Path(os.environ['R'])
from webly.data.manifest import Manifest
root = Path(Manifest(out / 'manifest.parquet').root)
(out / 'manifest').mkdir(exist_ok=True)
import shutil; shutil.copy(out / 'manifest.parquet', out / 'manifest/manifest.parquet')
truth = harness.true_labels_of_rows(out, root)
t = pq.read_table(out / 'pl/scores.parquet').to_pydict()
r = np.array(t['row']); wrong = np.array(t['label']) != truth[r]
res = {'noise': json.loads((root / 'info/noise.json').read_text()),
       'detection': fashion53.detection({'images': np.array(t['p_image'], float), 'text': np.array(t['p_text'], float), 'images_and_text': np.array(t['p_label'], float)}, wrong),
       'pl_text': harness.label_effect(out / 'pl/labels.parquet', truth),
       'pl_image': harness.label_effect(out / 'pl_image/labels.parquet', truth),
       'ce_val_top1': json.loads((out / 'ce/train.summary.json').read_text())['val_top1']}
print(json.dumps(res, indent=1))
(out / 'detection.json').write_text(json.dumps(res, indent=1) + '\n')
PY

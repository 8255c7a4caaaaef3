#!/usr/bin/env bash
# Do the command-line defaults fit a dataset of one's own? The calibration of issue 26: finetune on
# fashion53's noisy training labels with the defaults only, beside the hand-set command that the
# benchmarks use; balanced and plain top-1 on the clean test split.
#     bash benchmarks/studies/defaults_check.sh runs/fashion53-default-shipped/manifest/manifest.parquet
set -euo pipefail
M=${1:?"usage: $0 MANIFEST [OUT]"}
OUT=${2:-runs/defaults-check}
W=".venv/bin/webly"
$W finetune "$M" --backbone cifar_resnet9 --img-size 32 --epochs 6 -o "$OUT/defaults"
$W finetune "$M" --backbone cifar_resnet9 --img-size 32 --augment pad_crop --in-memory --epochs 6 \
  --batch-size 128 --lr 0.1 --schedule cosine --accum-steps 1 -o "$OUT/hand"
for r in defaults hand; do
  $W predict "$OUT/$r" "$M" --split test -o "$OUT/test_$r" >/dev/null
  $W evaluate "$OUT/test_$r" --manifest "$M" >/dev/null
  .venv/bin/python - "$OUT" "$r" <<'PY'
import json, sys
out, r = sys.argv[1], sys.argv[2]
m = json.load(open(f"{out}/test_{r}/metrics.json"))
s = json.load(open(f"{out}/{r}/train.summary.json"))
p = s["plan"]
print(f"{r:9s} top-1 {100 * m['top1']:.2f}  balanced top-1 {100 * m['balanced_top1']:.2f}  "
      f"({p['optimizer_steps']} optimizer steps, effective batch {p['effective_batch']}, "
      f"lr {p['schedule']}; {s['seconds']:.0f} s)")
PY
done

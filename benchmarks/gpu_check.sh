#!/usr/bin/env bash
# GPU check of the paper configuration, in a few minutes on one machine with one or more GPUs:
#   1. a few bf16 DDP training steps of configs/kits.yaml (+ the ddp_bf16 overlay) on synthetic phantoms,
#      printing each rank's step time and peak GPU memory (sam3d.callbacks.StepReport);
#   2. `sam3d test` with correction clicks, printing the seconds per click (crop encodings reused);
#   3. benchmarks/network.py in bf16 on the GPU: training step and clicks, old path against new.
# Random SAM weights (no download): memory and time are those of the real network.
#   bash benchmarks/gpu_check.sh [output folder]        (from the repository root, .venv installed)
# VARIANT=tiny ACCELERATOR=cpu DEVICES=2 PRECISION=32-true runs the same commands on a CPU as a smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
bin=${BIN:-.venv/bin}
variant=${VARIANT:-vit_b}
accelerator=${ACCELERATOR:-gpu}
devices=${DEVICES:--1}  # -1: every GPU
precision=${PRECISION:-bf16-mixed}
steps=${STEPS:-12}
export WANDB_MODE=offline
echo "output in $out"
$bin/python -c "import torch; print('torch', torch.__version__, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"

common=(
  -c configs/kits.yaml -c configs/trainer/ddp_bf16.yaml
  --model.variant "$variant" --trainer.accelerator "$accelerator" --trainer.devices "$devices"
  --trainer.precision "$precision"
  --data.dataset msd --data.root "$out/data" --data.cache_dir "$out/cache" --data.target_label "[1]"
  --data.intensity_window "[-100, 200]" --data.mean 50 --data.std 40 --data.num_workers 4
  --trainer.logger.init_args.save_dir "$out/runs"
)
if [ "$variant" = tiny ]; then common+=(--data.patch_size "[64, 64, 64]"); fi

$bin/sam3d make-synthetic "$out/data" --num_cases 12 --seed 0
start=$(date +%s)
$bin/sam3d fit "${common[@]}" --trainer.max_steps "$steps" --trainer.callbacks+=sam3d.callbacks.StepReport
echo "fit: $(( $(date +%s) - start )) s in all (start-up, caching, $steps steps per rank, validation)"

start=$(date +%s)
$bin/sam3d test "${common[@]}" --trainer.devices 1 --trainer.strategy auto --ckpt_path last \
  --evaluation.first_click center --evaluation.refinement_clicks 4
echo "test: $(( $(date +%s) - start )) s in all"
$bin/python - "$out/runs" <<'PY'
import csv, statistics, sys
from pathlib import Path
rows = [r for f in Path(sys.argv[1]).glob("**/test/cases.csv") for r in csv.DictReader(f.open())]
for clicks in sorted({int(r["clicks"]) for r in rows}):
    seconds = [float(r["seconds"]) for r in rows if int(r["clicks"]) == clicks]
    print(f"click {clicks}: median {statistics.median(seconds):.3f} s over {len(seconds)} cases (whole volume)")
PY

if [ "$accelerator" = gpu ]; then
  $bin/python benchmarks/network.py train-step --variant "$variant" --bf16 --repeats 4 --limit-gib 100
  $bin/python benchmarks/network.py click --variant "$variant" --bf16 --repeats 4 --limit-gib 100
fi

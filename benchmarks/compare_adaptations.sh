#!/usr/bin/env bash
# The adapter comparison on synthetic phantoms (tiny network, CPU): fit and test each adaptation of SAM's
# encoder on the same data and folds, then one `sam3d report` (table and figure) over their test runs.
# The tiny network has no pretrained SAM weights: its frozen weights are random, so the numbers check that
# the comparison runs end to end; they say nothing about the adaptations on real CT.
#   bash benchmarks/compare_adaptations.sh [output folder]     (from the repository root, .venv installed)
# EPOCHS (default 3), SAMPLES (training patches per volume and epoch, default 2) and ADAPTATIONS (default
# all five) change the run; an existing OUT/data is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-compare_output}
bin=${BIN:-.venv/bin}
epochs=${EPOCHS:-3}
samples=${SAMPLES:-2}
adaptations=${ADAPTATIONS:-spatial bottleneck lora frozen full}
export WANDB_MODE=${WANDB_MODE:-offline}
echo "output in $out"
[ -d "$out/data" ] || $bin/sam3d make-synthetic "$out/data" --num_cases 24 --seed 0
for adaptation in $adaptations; do
  run=(
    -c configs/synthetic.yaml --data.root "$out/data" --data.cache_dir "$out/cache"
    --trainer.logger.init_args.save_dir "$out/runs/$adaptation" --trainer.logger.init_args.name "$adaptation"
    --model.adaptation "$adaptation" --model.freeze_sam true --trainer.max_epochs "$epochs"
    --data.samples_per_volume "$samples" --trainer.check_val_every_n_epoch "$epochs"
  )
  start=$(date +%s)
  $bin/sam3d fit "${run[@]}"
  $bin/sam3d test "${run[@]}" --ckpt_path best --evaluation.first_click center --evaluation.refinement_clicks 2
  echo "$adaptation: fit and test in $(($(date +%s) - start)) s"
done
$bin/sam3d report "$out/runs" --output "$out/report"

#!/usr/bin/env bash
# IISAN-Versa with a deep text encoder, on the synthetic multimodal set of bench/versa.sh:
# a random 24-layer, 512-wide BERT-shaped text encoder (25 cached states) with dinov2-small
# (13 states, 384 wide), `intra_inter`, 3 seeds each:
#   all            every layer in the intra towers (25 text steps): the project default rule
#   every-other    the paper's LayerDrop (13 text steps)
#   groups-6       --text-steps 6 --image-steps 6: 6 evenly spaced layers per encoder,
#                  for the intra and the inter tower (IISAN-Versa's group layer-dropping)
#   truncate-6     --text-layers 1..6 --image-layers 1..6: the first 6 layers only (control)
#   groups-6-per-step-dtl   groups-6 with one text->image width map per inter step
#   groups-6-compact        groups-6 with compact heads (512 -> 64 -> 64)
# Then one table (test HR@10 / NDCG@10 mean ± std, trainable parameters, step time) and the
# cache size when every layer is stored against only the 6 the groups read.
#
#   bash bench/versa_large.sh [WORK_DIR]      (default bench/out/versa; reuses its synthetic set)
set -euo pipefail

WORK=${1:-bench/out/versa}
SEEDS=${SEEDS:-"42 43 44"}
IMAGE_SIZE=${IMAGE_SIZE:-112}
JOBS=${JOBS:-2}  # runs in parallel, one thread each
HERE=$(dirname "$0")
OUT="$WORK/deep-text"
mkdir -p "$OUT"

[ -f "$WORK/src/synth.json" ] || iisan -q data synth --items 2000 --users 1000 --out "$WORK/src"
[ -f "$WORK/synth/dataset.json" ] || iisan -q prepare "$WORK/src" --format iisan-tsv --out "$WORK/synth"
python - "$OUT/text-encoder" <<'EOF'
import sys
from pathlib import Path
from iisan.encoders.tiny import build_tiny_encoder
if not (Path(sys.argv[1]) / "config.json").is_file():
    build_tiny_encoder(Path(sys.argv[1]), "text", hidden=512, layers=24, heads=8, seed=0)
EOF
iisan -q encode "$WORK/synth" --out "$OUT/cache" --text-encoder "$OUT/text-encoder" \
  --image-encoder dinov2-small --image-size "$IMAGE_SIZE" --pooling mean
# The same states, only the 6 layers groups-6 reads (and the last, always stored): the cache size a deep encoder needs.
iisan -q encode "$WORK/synth" --out "$OUT/cache-6" --text-encoder "$OUT/text-encoder" --image-encoder none \
  --pooling mean --text-layers 4,8,12,16,20,24

jobs_list=()
add() {  # add LABEL [train options...]
  local label=$1
  shift
  for seed in $SEEDS; do
    jobs_list+=("iisan -q --threads 1 train $WORK/synth --cache $OUT/cache --seed $seed --out $OUT/runs/$label-$seed --force $*")
  done
}
add all
add every-other --layer-rule every_other
add groups-6 --text-steps 6 --image-steps 6
add truncate-6 --text-layers 1,2,3,4,5,6 --image-layers 1,2,3,4,5,6
add groups-6-per-step-dtl --text-steps 6 --image-steps 6 --dtl per_step
add groups-6-compact --text-steps 6 --image-steps 6 --head compact
printf '%s\n' "${jobs_list[@]}" | xargs -P "$JOBS" -I{} sh -c '{} > /dev/null'

python "$HERE/versa_table.py" "$OUT/runs" | tee "$OUT/versa-large.md"
du -sm "$OUT/cache/text.npy" "$OUT/cache-6/text.npy" | tee -a "$OUT/versa-large.md"

#!/usr/bin/env bash
# Which towers matter: IISAN on the synthetic multimodal set, where titles name only the
# category and images show only the colour, so only a model reading both finds the exact
# (category, colour) a user prefers. Trains every --modality on the same cache, 3 seeds.
#
#   bash bench/modalities.sh [WORK_DIR] [TEXT_ENCODER] [IMAGE_ENCODER] [MODALITIES]
#
# Defaults: bench/out/modalities, tiny-random-text + tiny-random-image (equal depth and
# width; minutes on 2 cores). Real encoders work too, e.g. minilm dinov2-small (6 vs 12
# layers: the inter tower uses IISAN-Versa's group layer-dropping; see bench/versa.sh).
set -euo pipefail

WORK=${1:-bench/out/modalities}
TEXT=${2:-tiny-random-text}
IMAGE=${3:-tiny-random-image}
MODALITIES=${4:-"text image intra inter intra_inter"}
SEEDS=${SEEDS:-"42 43 44"}
TRAIN_ARGS=${TRAIN_ARGS:-}
POOLING=auto  # each encoder's own: mean for minilm, CLS for dinov2-small
IMAGE_SIZE=112
case "$TEXT" in tiny-*) POOLING=mean; IMAGE_SIZE=32 ;; esac  # a random tiny BERT's CLS carries no content
mkdir -p "$WORK"

[ -f "$WORK/src/synth.json" ] || iisan data synth --items 2000 --users 1000 --out "$WORK/src"
[ -f "$WORK/synth/dataset.json" ] || iisan prepare "$WORK/src" --format iisan-tsv --keep-last 13 --out "$WORK/synth"
CACHE="$WORK/cache-$TEXT-$IMAGE"
iisan encode "$WORK/synth" --out "$CACHE" --text-encoder "$TEXT" --image-encoder "$IMAGE" \
  --pooling "$POOLING" --image-size "$IMAGE_SIZE"

RUNS="$WORK/runs-$TEXT-$IMAGE"
for seed in $SEEDS; do
  for modality in $MODALITIES; do
    iisan -q train "$WORK/synth" --cache "$CACHE" --modality "$modality" --seed "$seed" \
      --out "$RUNS/$modality-$seed" --force $TRAIN_ARGS
  done
done
python "$(dirname "$0")/summarise_runs.py" "$RUNS" | tee "$WORK/modalities-$TEXT-$IMAGE.md"

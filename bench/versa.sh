#!/usr/bin/env bash
# IISAN-Versa on the synthetic multimodal set (titles name the category, images show the
# colour), for two real encoder pairs, 3 seeds each:
#   minilm + dinov2-small   6 vs 12 layers, both 384 wide: group layer-dropping
#                           (last of each group, the default; mean) against the naive
#                           control that truncates dinov2's extra layers, and `intra`
#                           (no inter-modal tower at all).
#   mpnet + dinov2-small    12 layers each, 768 vs 384 wide: the dimension transformation
#                           to the smaller width (default) or the larger, and `intra`.
# Then one table: test HR@10 / NDCG@10, trainable parameters, step time.
#
#   bash bench/versa.sh [WORK_DIR]      (default bench/out/versa; about 40 min on 2 cores)
set -euo pipefail

WORK=${1:-bench/out/versa}
SEEDS=${SEEDS:-"42 43 44"}
TRAIN_ARGS=${TRAIN_ARGS:-}
IMAGE_SIZE=${IMAGE_SIZE:-112}  # dinov2's patch grid at 112 px keeps CPU encoding to minutes
HERE=$(dirname "$0")
mkdir -p "$WORK"

[ -f "$WORK/src/synth.json" ] || iisan data synth --items 2000 --users 1000 --out "$WORK/src"
[ -f "$WORK/synth/dataset.json" ] || iisan prepare "$WORK/src" --format iisan-tsv --keep-last 13 --out "$WORK/synth"

run() {  # run PAIR LABEL [train options...]
  local pair=$1 label=$2
  shift 2
  for seed in $SEEDS; do
    iisan -q train "$WORK/synth" --cache "$WORK/cache-$pair" --seed "$seed" \
      --out "$WORK/$pair/$label-$seed" --force "$@" $TRAIN_ARGS
  done
}

for pair in minilm+dinov2-small mpnet+dinov2-small; do
  iisan encode "$WORK/synth" --out "$WORK/cache-$pair" --text-encoder "${pair%+*}" \
    --image-encoder "${pair#*+}" --image-size "$IMAGE_SIZE"
done

run minilm+dinov2-small versa-last --inter-layers last
run minilm+dinov2-small versa-mean --inter-layers mean
run minilm+dinov2-small truncate --inter-layers truncate
run minilm+dinov2-small intra --modality intra
run mpnet+dinov2-small versa-dtl-smaller --dtl-to smaller
run mpnet+dinov2-small versa-dtl-larger --dtl-to larger
run mpnet+dinov2-small intra --modality intra

python "$HERE/versa_table.py" "$WORK/minilm+dinov2-small" "$WORK/mpnet+dinov2-small" | tee "$WORK/versa.md"

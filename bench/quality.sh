#!/usr/bin/env bash
# Accuracy on Amazon Scientific (text, minilm), full ranking, 3 seeds, both protocols.
#
# 1. Levers, from the paper's settings towards the defaults: each row changes one thing
#    against the row it names (see LEVERS below), so its effect is read off one pair.
# 2. The defaults against frozen features, ID-SASRec (RecBole's recipe), the encoder
#    baselines and the RecBole 1.2.1 SASRec peer figure measured on exactly this split.
#
# Each run is selected on validation NDCG@10 with history excluded (the paper's protocol)
# and tested both ways: history excluded, and history ranked too. RecBole 1.2.1 does not
# exclude history for sequential models (FullSortEvalDataLoader passes no history for
# them), so the peer figure compares with the second.
#
#   bash bench/quality.sh [WORK_DIR]          (default bench/out/quality)
#   ONLY="defaults id-recbole" bash bench/quality.sh     # some rows only
#
# Time on a 2-core CPU, per seed: 5-15 min for an in-batch IISAN row, about 40 min for a
# `--loss full` IISAN row (the item tower embeds all 20k items at every step), 20-60 min for
# ID-SASRec with the full-catalogue loss. The encoder baselines (fft, adapter, lora,
# bitfit: minilm trained on raw text at every step) cost minutes per epoch on a CPU, so
# they run on ENCODER_SEEDS (default 42) for at most ENCODER_EPOCHS (default 2);
# ENCODER_METHODS="" skips them. On a GPU they converge in minutes:
#   DEVICE=cuda ONLY="fft lora" ENCODER_SEEDS="42 43" ENCODER_EPOCHS=50 bash bench/quality.sh
# (add ENCODER_OPTIONS=before for the recipe the README's H200 fft and lora rows used).
set -euo pipefail

WORK=${1:-bench/out/quality}
# The data: Amazon Scientific in the reference TSV layout, beside the checkout (../shared, as
# CI has it), or wherever SCIENTIFIC points (a folder holding items.tsv and users.tsv).
SCIENTIFIC=${SCIENTIFIC:-$(cd "$(dirname "$0")/../.." && pwd)/shared/datasets/amazon-scientific}
if [ ! -f "$SCIENTIFIC/items.tsv" ] && [ ! -f "$WORK/scientific/dataset.json" ]; then
  echo "bench/quality.sh needs Amazon Scientific in the reference TSV layout (items.tsv, users.tsv):" >&2
  echo "  not found at $SCIENTIFIC. A lone clone does not have it: it lies in ../shared/datasets beside" >&2
  echo "  the project's checkout, where CI and the results pages read it." >&2
  echo "  Point SCIENTIFIC=/path/to/amazon-scientific at a copy, or run from a checkout with ../shared." >&2
  exit 2
fi
SEEDS=${SEEDS:-"42 43 44"}
ONLY=${ONLY:-}
DEVICE=${DEVICE:-auto}
JOBS=${JOBS:-1}  # runs at once; each takes one thread when there are several
THREADS=""
[ "$JOBS" -gt 1 ] && THREADS="--threads 1"
mkdir -p "$WORK"

[ -f "$WORK/scientific/dataset.json" ] || iisan prepare "$SCIENTIFIC" --format iisan-tsv --keep-last 13 --out "$WORK/scientific"
# The paper's pooling (first token) and the encoder's own (minilm: masked mean, the default).
iisan encode "$WORK/scientific" --out "$WORK/cache-cls" --image-encoder none --pooling cls --precision fp32 --device "$DEVICE"
iisan encode "$WORK/scientific" --out "$WORK/cache-mean" --image-encoder none --precision fp32 --device "$DEVICE"

# The recipe before this comparison's last steps (constant learning rate, 50 epochs, the
# reference's user encoder, a user's window a sample, 64 a batch), and the paper's settings
# on top of it.
BEFORE="--schedule constant --warmup-epochs 0 --epochs 50 --user-encoder reference --samples sequences --train-batch-size 64 --no-blend"
PAPER="$BEFORE --layers 0,2,4,6 --loss in_batch --dropout 0.1 --patience 5 --no-id-offset"

# label | cache | options
LEVERS=$(cat <<EOF
reference        | cache-cls  | $PAPER
mean             | cache-mean | $PAPER
mean-all         | cache-mean | $PAPER --layer-rule all
mean-sampled     | cache-mean | $PAPER --loss sampled --negatives 2048 --train-batch-size 256
mean-full        | cache-mean | $PAPER --loss full --train-batch-size 256
all-d05          | cache-mean | $PAPER --layer-rule all --dropout 0.5
all-offset-lr1e3 | cache-mean | $PAPER --layer-rule all --id-offset --id-offset-lr 1e-3
all-offset-lr3e5 | cache-mean | $PAPER --layer-rule all --id-offset --id-offset-lr 3e-5
before           | cache-mean | $BEFORE
before-sidelr    | cache-mean | $BEFORE --side-lr 1e-4
steps2           | cache-mean | $BEFORE --text-steps 2
steps1           | cache-mean | $BEFORE --text-steps 1
cosine30         | cache-mean | $BEFORE --epochs 30 --schedule cosine --warmup-epochs 1
recbole          | cache-mean | $BEFORE --user-encoder recbole
full             | cache-mean | $BEFORE --loss full
defaults         | cache-mean |
blend1           | cache-mean | --blend-groups 1
balanced         | cache-mean | --blend-select balanced
plainfloor       | cache-mean | --blend-whiten off
nowords          | cache-mean | --blend-terms 0
noblend          | cache-mean | --no-blend
knn              | cache-mean | --method knn
knn-whiten       | cache-mean | --method knn --knn-whiten on
knn-words        | cache-mean | --method knn --knn-terms 512
knn-whiten-words | cache-mean | --method knn --knn-whiten on --knn-terms 512
frozen-noblend   | cache-mean | --method frozen --no-blend
patience10       | cache-mean | --patience 10 --no-blend
bottleneck128    | cache-mean | --bottleneck 128 --no-blend
frozen-nooffset  | cache-mean | $BEFORE --method frozen --no-id-offset
frozen-before    | cache-mean | $BEFORE --method frozen
frozen           | cache-mean | --method frozen
id-before        | none       | $BEFORE --method id
id-recbole       | none       | $BEFORE --method id --user-encoder recbole
id-sequences     | none       | --method id --samples sequences --train-batch-size 64
id               | none       | --method id
id-e15           | none       | --method id --samples sequences --train-batch-size 64 --epochs 15
prefixes         | cache-mean | --samples prefixes --train-batch-size 256 --no-blend
batch256         | cache-mean | --train-batch-size 256 --no-blend
id-b256          | none       | $BEFORE --method id --train-batch-size 256
id-inbatch       | none       | --method id $PAPER
unisrec          | cache-mean | --method unisrec
unisrec-inductive | cache-mean | --method unisrec --unisrec-setting inductive
EOF
)
# Each lever row differs from one other row in one setting:
#   mean vs reference: the encoder's own pooling (mean for minilm);
#   mean-all vs mean: every layer; mean-sampled, mean-full vs mean: the loss's candidates;
#   all-d05 vs mean-all: user-encoder dropout; all-offset-* and before vs mean-all: id offsets
#   at lr 1e-3, 3e-5 and 1e-4; before-sidelr vs before: the reference's side-network learning
#   rate; steps2, steps1 vs before: fewer layer groups; cosine30 vs before: a cosine schedule
#   over 30 epochs after one warm-up epoch; recbole vs before: RecBole's user-encoder details;
#   full vs before: the full-catalogue loss at 64 users a batch; defaults: cosine30 and recbole
#   together (the defaults now); patience10, bottleneck128 vs defaults: longer patience, wider
#   side blocks (patience10, bottleneck128 without the blend). frozen-nooffset vs frozen-before: the offset without a side
#   network; frozen: with today's defaults. id-before: RecBole's recipe (full-catalogue loss,
#   dropout 0.5, patience 10) with the reference's user encoder, id-recbole with RecBole's,
#   id-sequences: cosine30 and recbole, a user's whole window a sample, 64 a batch (id's
#   defaults before prefixes); id: one sample per prefix, 256 a batch (RecBole's; today's
#   defaults); id-e15: id-sequences with its cosine over 15 epochs; id-b256: 256 users a batch;
#   id-inbatch: the in-batch recipe id used before. prefixes vs noblend: IISAN on prefixes,
#   256 a batch; batch256 vs noblend: 256 windows a batch (four times the in-batch negatives).
#   blend1 vs defaults: one set of blend weights for every user, against one per group of users
#   (by the share of rare items in the history); balanced: the blend fitted for the cold, tail
#   and head slices alike; plainfloor vs defaults: the blend's floor reads the content as it
#   is, not whitened (the defaults until late 2026-12-02); knn-whiten vs knn: the floor on whitened
#   content; nowords vs defaults: the blend's floor without the texts' words (the defaults until
#   2026-12-03); knn-words, knn-whiten-words: the floors with the words added.
#   defaults vs noblend: the score blended with the content floor's and priors for cold and
#   tail items, weighed on validation (today's default; every row that says --no-blend, and
#   BEFORE, scores as trained); knn: the content-only floor (no training); frozen vs
#   frozen-noblend: the blend on frozen features. unisrec, unisrec-inductive: the content peer
#   (UniSRec) with its authors' fine-tuning recipe (full-catalogue loss on every prefix, 256 a
#   batch), transductive (text + item ids) and inductive (text alone). The slice table (--slices) is what the
#   blend is for: new and rare targets.
#
# On a GPU, `DEVICE=cuda JOBS=16 bash bench/quality.sh` runs 16 at once on the one GPU (the
# README's H200 rows ran so: the same commands with --device cuda).

while IFS='|' read -r label cache options; do
  label=$(echo $label)
  [ -n "$ONLY" ] && [[ " $ONLY " != *" $label "* ]] && continue
  cache_option=""
  [ "$(echo $cache)" != none ] && cache_option="--cache $WORK/$(echo $cache)"
  for seed in $SEEDS; do
    run="$WORK/runs/$label-$seed"
    [ -f "$run/metrics.json" ] && continue  # finished earlier: keep it
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    # shellcheck disable=SC2086
    iisan -q $THREADS train "$WORK/scientific" $cache_option --modality text --seed "$seed" --out "$run" --force \
      --device "$DEVICE" $options &
  done
done <<< "$LEVERS"
wait

ENCODER_METHODS=${ENCODER_METHODS-"fft adapter lora bitfit"}
# ENCODER_OPTIONS=before trains them with the recipe before (what the README's H200 fft and lora rows used).
ENCODER_RECIPE=""
[ "${ENCODER_OPTIONS:-}" = before ] && ENCODER_RECIPE="$BEFORE"
for seed in ${ENCODER_SEEDS:-42}; do
  for method in $ENCODER_METHODS; do
    [ -n "$ONLY" ] && [[ " $ONLY " != *" $method "* ]] && continue
    [ -f "$WORK/runs/$method-text-$seed/metrics.json" ] && continue
    iisan -q train "$WORK/scientific" --cache "$WORK/cache-mean" --method "$method" --modality text --seed "$seed" \
      $ENCODER_RECIPE --epochs "${ENCODER_EPOCHS:-2}" --out "$WORK/runs/$method-text-$seed" --force --device "$DEVICE"
  done
done
for run in "$WORK"/runs/*; do
  python -c "import json,sys; sys.exit('test_with_history' in json.load(open('$run/metrics.json')))" 2>/dev/null &&
    iisan -q evaluate "$run" --split test --include-history --device "$DEVICE" > /dev/null
done

python "$(dirname "$0")/summarise_runs.py" "$WORK/runs" \
  --peer "RecBole 1.2.1 SASRec (CE, peer)" 0.0931 0.0671 --slices | tee "$WORK/quality.md"

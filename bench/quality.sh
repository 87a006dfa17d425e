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
# ENCODER_METHODS="" skips them.
set -euo pipefail

WORK=${1:-bench/out/quality}
SCIENTIFIC=$(cd "$(dirname "$0")/../.." && pwd)/shared/datasets/amazon-scientific
SEEDS=${SEEDS:-"42 43 44"}
ONLY=${ONLY:-}
mkdir -p "$WORK"

[ -f "$WORK/scientific/dataset.json" ] || iisan prepare "$SCIENTIFIC" --format iisan-tsv --out "$WORK/scientific"
# The paper's pooling (first token) and the encoder's own (minilm: masked mean, the default).
iisan encode "$WORK/scientific" --out "$WORK/cache-cls" --image-encoder none --pooling cls
iisan encode "$WORK/scientific" --out "$WORK/cache-mean" --image-encoder none

# The paper's settings, as this project's defaults were before the comparison.
PAPER="--layers 0,2,4,6 --loss in_batch --dropout 0.1 --batch-size 64 --patience 5 --no-id-offset"

# label | cache | options
LEVERS=$(cat <<EOF
reference        | cache-cls  | $PAPER
mean             | cache-mean | $PAPER
mean-all         | cache-mean | $PAPER --layers all
mean-sampled     | cache-mean | $PAPER --loss sampled --negatives 2048 --batch-size 256
mean-full        | cache-mean | $PAPER --loss full --batch-size 256
all-d05          | cache-mean | $PAPER --layers all --dropout 0.5
all-offset-lr1e3 | cache-mean | $PAPER --layers all --id-offset --id-offset-lr 1e-3
all-offset-lr3e5 | cache-mean | $PAPER --layers all --id-offset --id-offset-lr 3e-5
defaults         | cache-mean |
defaults-sidelr  | cache-mean | --side-lr 1e-4
frozen-nooffset  | cache-mean | --method frozen --no-id-offset
frozen           | cache-mean | --method frozen
id               | none       | --method id
id-b256          | none       | --method id --batch-size 256
id-inbatch       | none       | --method id $PAPER
EOF
)
# Each lever row differs from one other row in one setting:
#   mean vs reference: the encoder's own pooling (mean for minilm);
#   mean-all vs mean: every layer; mean-sampled, mean-full vs mean: the loss's candidates;
#   all-d05 vs mean-all: user-encoder dropout; all-offset-* and defaults vs mean-all: id offsets
#   at lr 1e-3, 3e-5 and 1e-4 (the default); defaults-sidelr vs defaults: the reference's
#   side-network learning rate; frozen-nooffset vs frozen: the offset without a
#   side network; id: RecBole's recipe, 64 users a batch (default); id-b256: 256; id-inbatch: the
#   in-batch recipe id used before.

while IFS='|' read -r label cache options; do
  label=$(echo $label)
  [ -n "$ONLY" ] && [[ " $ONLY " != *" $label "* ]] && continue
  cache_option=""
  [ "$(echo $cache)" != none ] && cache_option="--cache $WORK/$(echo $cache)"
  for seed in $SEEDS; do
    run="$WORK/runs/$label-$seed"
    [ -f "$run/metrics.json" ] && continue  # finished earlier: keep it
    # shellcheck disable=SC2086
    iisan -q train "$WORK/scientific" $cache_option --modality text --seed "$seed" --out "$run" --force $options
  done
done <<< "$LEVERS"

ENCODER_METHODS=${ENCODER_METHODS-"fft adapter lora bitfit"}
for seed in ${ENCODER_SEEDS:-42}; do
  for method in $ENCODER_METHODS; do
    [ -n "$ONLY" ] && [[ " $ONLY " != *" $method "* ]] && continue
    [ -f "$WORK/runs/$method-text-$seed/metrics.json" ] && continue
    iisan -q train "$WORK/scientific" --cache "$WORK/cache-mean" --method "$method" --modality text --seed "$seed" \
      --epochs "${ENCODER_EPOCHS:-2}" --out "$WORK/runs/$method-text-$seed" --force
  done
done
for run in "$WORK"/runs/*; do
  python -c "import json,sys; sys.exit('test_with_history' in json.load(open('$run/metrics.json')))" 2>/dev/null &&
    iisan -q evaluate "$run" --split test --include-history > /dev/null
done

python "$(dirname "$0")/summarise_runs.py" "$WORK/runs" \
  --peer "RecBole 1.2.1 SASRec (CE, peer)" 0.0931 0.0671 | tee "$WORK/quality.md"

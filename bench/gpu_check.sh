#!/usr/bin/env bash
# The GPU checks of one session, in one script (about 6 minutes on one H100):
#   1. `iisan bench efficiency` in the paper's setting: BERT-base-shaped text and
#      ViT-B/16-shaped image encoders (random weights, 12 x 768, 224 px), batch 32,
#      intra_inter, on the synthetic multimodal set: s/step and CUDA max allocated per method.
#   2. Scientific (text, minilm), 2 epochs each of IISAN-cached and fft: seconds per epoch
#      (the target: cached >= 20x faster), then `iisan evaluate` time of the IISAN run.
# Every command's JSON lands in WORK; the last lines print the ratios.
#
#   bash bench/gpu_check.sh [WORK_DIR]       (default bench/out/gpu; DEVICE=cuda)
#   HIDDEN=64 LAYERS=2 HEADS=4 IMAGE_SIZE=32 DEVICE=cpu bash bench/gpu_check.sh /tmp/gpu-smoke   (a CPU smoke run)
set -euo pipefail

WORK=${1:-bench/out/gpu}
DEVICE=${DEVICE:-cuda}
HIDDEN=${HIDDEN:-768}
LAYERS=${LAYERS:-12}
HEADS=${HEADS:-12}
IMAGE_SIZE=${IMAGE_SIZE:-224}
EPOCHS=${EPOCHS:-2}
SCIENTIFIC=${SCIENTIFIC:-$(dirname "$0")/../../shared/datasets/amazon-scientific}
mkdir -p "$WORK"

echo "== 1. paper-setting efficiency ($HIDDEN wide, $LAYERS layers, $IMAGE_SIZE px, $DEVICE)"
python - "$WORK" "$HIDDEN" "$LAYERS" "$HEADS" "$IMAGE_SIZE" <<'EOF'
import sys
from pathlib import Path
from iisan.encoders.tiny import build_tiny_encoder

work, hidden, layers, heads, size = Path(sys.argv[1]), *map(int, sys.argv[2:])
for modality in ("text", "image"):
    build_tiny_encoder(work / f"{modality}-encoder", modality, hidden=hidden, layers=layers, heads=heads,
                       image_size=size, patch=16 if size >= 64 else 8)
EOF
[ -f "$WORK/src/synth.json" ] || iisan -q data synth --items 2000 --users 1000 --out "$WORK/src"
[ -f "$WORK/synth/dataset.json" ] || iisan -q prepare "$WORK/src" --format iisan-tsv --out "$WORK/synth"
iisan -q bench efficiency "$WORK/synth" --out "$WORK/efficiency" --train-batch-size 32 --image-size "$IMAGE_SIZE" \
  --text-encoder "$WORK/text-encoder" --image-encoder "$WORK/image-encoder" --device "$DEVICE" \
  > "$WORK/efficiency.txt" || echo "some methods failed: see $WORK/efficiency/efficiency.json"
cat "$WORK/efficiency/efficiency.md"

echo "== 2. Scientific epochs and evaluation ($DEVICE)"
[ -f "$WORK/scientific/dataset.json" ] || iisan -q prepare "$SCIENTIFIC" --format iisan-tsv --keep-last 13 --out "$WORK/scientific"
iisan -q encode "$WORK/scientific" --out "$WORK/cache-minilm" --text-encoder minilm --image-encoder none \
  --device "$DEVICE" --json > "$WORK/encode.json"
for method in iisan fft; do
  iisan -q train "$WORK/scientific" --cache "$WORK/cache-minilm" --method "$method" --modality text \
    --epochs "$EPOCHS" --patience "$EPOCHS" --out "$WORK/runs/$method" --force --device "$DEVICE" --json \
    > "$WORK/train-$method.json"
done
iisan -q evaluate "$WORK/runs/iisan" --device "$DEVICE" --json > "$WORK/evaluate-iisan.json"
python - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
iisan, fft = (json.loads((work / f"train-{m}.json").read_text()) for m in ("iisan", "fft"))
evaluation = json.loads((work / "evaluate-iisan.json").read_text())
encode = json.loads((work / "encode.json").read_text())
print(f"encode minilm: {encode['text']['seconds']} s")
print(f"epoch: iisan-cached {iisan['seconds_per_epoch']} s, fft {fft['seconds_per_epoch']} s, "
      f"ratio {fft['seconds_per_epoch'] / iisan['seconds_per_epoch']:.1f}x")
print(f"evaluate (test, full ranking) on {evaluation['device']}: {evaluation['seconds']} s")
print(f"test ndcg@10: iisan {iisan['test']['ndcg@10']:.4f}, fft {fft['test']['ndcg@10']:.4f} (after {iisan['epochs']} epochs)")
EOF

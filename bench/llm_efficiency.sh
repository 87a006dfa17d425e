#!/usr/bin/env bash
# A decoder LLM as the text encoder through `iisan bench efficiency`: fft and lora against
# IISAN-cached, time per step and memory, side by side in one run.
#
# The shape is Qwen2-0.5B's (24 layers, 896 wide, 14 heads, 7 key-value heads, MLP 4864,
# vocabulary 151,936: about 0.5B parameters) with random weights (nothing is downloaded;
# the weights do not change the cost). On a CPU the data is a slice of Amazon Scientific
# (the first USERS users and their items, text only), batch 4, so that a run takes minutes;
# on a GPU raise USERS and BATCH.
#
#   bash bench/llm_efficiency.sh [WORK_DIR]     (default bench/out/llm; DEVICE=auto)
set -euo pipefail

WORK=${1:-bench/out/llm}
USERS=${USERS:-120}
BATCH=${BATCH:-4}
STEPS=${STEPS:-2}
DEVICE=${DEVICE:-auto}
SCIENTIFIC=${SCIENTIFIC:-$(dirname "$0")/../../shared/datasets/amazon-scientific}
mkdir -p "$WORK"

python - "$WORK" "$SCIENTIFIC" "$USERS" <<'EOF'
import sys
from pathlib import Path
from iisan.encoders.tiny import build_tiny_decoder

work, source, users = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
if not (work / "qwen2-0.5b-shape" / "config.json").is_file():
    build_tiny_decoder(work / "qwen2-0.5b-shape", "qwen2", hidden=896, layers=24, heads=14, intermediate=4864,
                       vocab_size=151936)
# A slice of Scientific: the first users and the items they name.
out = work / "source"
out.mkdir(exist_ok=True)
lines = (source / "users.tsv").read_text(encoding="utf-8").splitlines()[:users]
keys = {key for line in lines for key in line.split("\t", 1)[1].split()}
items = [line for line in (source / "items.tsv").read_text(encoding="utf-8").splitlines()
         if line.split("\t", 1)[0] in keys]
(out / "users.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
(out / "items.tsv").write_text("\n".join(items) + "\n", encoding="utf-8")
print(f"{len(lines)} users, {len(items)} items")
EOF
[ -f "$WORK/data/dataset.json" ] || iisan -q prepare "$WORK/source" --format iisan-tsv --out "$WORK/data"
iisan bench efficiency "$WORK/data" --out "$WORK/efficiency" --methods fft,lora,iisan-cached \
  --text-encoder "$WORK/qwen2-0.5b-shape" --steps "$STEPS" --train-batch-size "$BATCH" --device "$DEVICE"
cat "$WORK/efficiency/efficiency.md"

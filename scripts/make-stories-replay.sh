#!/usr/bin/env bash
# data/stories/stories260k-samples.txt: the bundled base model's own stories (sampled at temperature
# 0.8 from three openings, seeds 1..N), one per line. The forgetting demo replays them (replay_datasets)
# and estimates EWC's Fisher information on them (ewc_datasets): text in the style the model was
# pretrained on, without shipping its pretraining data (pseudo-rehearsal).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
set -euo pipefail
# RECIPE_BIN: an already built binary (skips the release build).
bin="${RECIPE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --locked --release
  bin="$CARGO_TARGET_DIR/release/recipe"
fi
n="${1:-48}"
out=data/stories/stories260k-samples.txt
mkdir -p data/stories
: >"$out"
prompts=("Once upon a time" "One day" "Tom and his mom")
for seed in $(seq 1 "$n"); do
  prompt="${prompts[$((seed % 3))]}"
  "$bin" generate models/stories260k --device cpu --prompt "$prompt" --temperature 0.8 --seed "$seed" \
    --max-new-tokens 200 2>/dev/null | tr '\n' ' ' | sed 's/  */ /g; s/ $//' >>"$out"
  echo >>"$out"
done
wc -l "$out"

#!/usr/bin/env bash
# The README's screenshot of `recipe eval`'s side-by-side report: trains the demo recipe (LoRA on
# stories260k), evaluates the base model against the trained one on next-line continuations of the
# Shakespeare excerpt (data/preference), and photographs eval_report.html with headless Chromium
# (Debian's `chromium` package) into docs/eval-report.png.
# RECIPE_BIN: an already built binary (skips the build). Arguments go to `recipe run` (e.g. a shorter
# run on a busy machine: --set max_steps=24 --set learning_rate=2.0e-3).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin="${RECIPE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --quiet --release
  bin="$CARGO_TARGET_DIR/release/recipe"
fi
"$bin" run recipes/demo/stories260k-lora.yaml --device cpu --no-progress --set "output_dir=$work/out" "$@"
"$bin" eval models/stories260k "$work/out" --device cpu --max-new-tokens 24 --output "$work/eval" \
  --dataset data/preference/shakespeare-continuations.jsonl \
  --dataset-type '{field_instruction: prompt, field_output: chosen, format: "{instruction}", no_input_format: "{instruction}"}'
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1300 \
  --virtual-time-budget=10000 --run-all-compositor-stages-before-draw \
  --screenshot="$PWD/docs/eval-report.png" "file://$work/eval/eval_report.html" 2>/dev/null
echo "docs/eval-report.png: $work/eval/eval_report.html"

#!/usr/bin/env bash
# Benchmark (not a test): host memory of `recipe merge` on a random 1.1B-parameter Llama stored in
# bfloat16 (TinyLlama-1.1B's shape) with a rank-16 LoRA adapter on every linear layer. Prints the
# peak RSS beside the model's bf16 size, checks the merged weights against peft's
# merge_and_unload, and writes a JSON summary (--out, default /tmp/bench-merge.json). Details:
# scripts/reference/bench_merge.py.
#
#   scripts/bench-merge.sh [--work DIR] [--out FILE]
#
# RECIPE_BIN=/path/to/recipe skips the build. The reference stack (scripts/reference/requirements.txt)
# is expected under $RECIPE_CACHE/ref-py, torch under $RECIPE_CACHE/torch-2.11.0.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if [ -z "${RECIPE_BIN:-}" ]; then
  cargo build --locked --release
  RECIPE_BIN="$CARGO_TARGET_DIR/release/recipe"
fi
export PYTHONPATH="${PYTHONPATH:-$RECIPE_CACHE/ref-py:$RECIPE_CACHE/torch-2.11.0}"
exec python3 -S scripts/reference/bench_merge.py --recipe-bin "$RECIPE_BIN" "$@"

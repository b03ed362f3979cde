#!/usr/bin/env bash
# Benchmark (not a test): DPO with LoRA, `recipe run` against TRL's DPOTrainer (with peft) on the same CPU,
# model and pairs. Prints tokens/s and peak RSS ratios and writes a JSON summary (--out, default
# /tmp/bench-dpo.json). Details: scripts/reference/bench_dpo.py.
#
#   scripts/bench-dpo.sh [--steps 60] [--out FILE]
#
# RECIPE_BIN=/path/to/recipe skips the build. The reference stacks (scripts/reference/requirements.txt and
# requirements-trl.txt) are expected under $RECIPE_CACHE/ref-py and ref-py-trl, torch under
# $RECIPE_CACHE/torch-2.11.0.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if [ -z "${RECIPE_BIN:-}" ]; then
  cargo build --locked --release
  RECIPE_BIN="$CARGO_TARGET_DIR/release/recipe"
fi
export PYTHONPATH="${PYTHONPATH:-$RECIPE_CACHE/ref-py-trl:$RECIPE_CACHE/ref-py:$RECIPE_CACHE/torch-2.11.0}"
exec python3 -S scripts/reference/bench_dpo.py --recipe-bin "$RECIPE_BIN" "$@"

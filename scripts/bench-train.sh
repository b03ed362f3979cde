#!/usr/bin/env bash
# Benchmark (not a test): `recipe run` against a Python reference (transformers + peft, a plain
# torch training loop) doing the same LoRA fine-tune on the same CPU, on stories260k and on a
# random-initialised 23.5M-parameter Llama. Prints tokens/s, process wall time, peak RSS and
# first/last losses of both, and writes a JSON summary (--out, default /tmp/bench-train.json).
# About 5 minutes on a 2-core machine. Details: scripts/reference/bench_train.py.
#
#   scripts/bench-train.sh [--out FILE] [--steps-small N] [--steps-large N] [--models a,b]
#                          [--keep DIR] [--quiet-timeout S] [--retries N]
#
# RECIPE_BIN=/path/to/recipe skips the build and benchmarks that binary instead.
# The reference stack (scripts/reference/requirements.txt) is expected under
# $RECIPE_CACHE/ref-py, torch under $RECIPE_CACHE/torch-2.11.0 (PYTHONPATH overrides both).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if [ -z "${RECIPE_BIN:-}" ]; then
  cargo build --locked --release
  RECIPE_BIN="$CARGO_TARGET_DIR/release/recipe"
fi
export PYTHONPATH="${PYTHONPATH:-$RECIPE_CACHE/ref-py:$RECIPE_CACHE/torch-2.11.0}"
exec python3 -S scripts/reference/bench_train.py --recipe-bin "$RECIPE_BIN" "$@"

#!/usr/bin/env bash
# Benchmark (not a test): sharded FULL fine-tuning on 2 CPU ranks, `recipe run --nproc-per-node 2`
# with `fsdp: [full_shard, auto_wrap]` (c10d Gloo) against torch FSDP2 (torchrun + transformers,
# fully_shard per decoder layer and root, activation checkpointing, gloo) on the same model, data and
# machine. Prints tokens/s and peak RSS per rank of both, as ratios, first/last losses, and writes a
# JSON summary (--out, default /tmp/bench-shard.json). Details: scripts/reference/bench_shard.py.
#
#   scripts/bench-shard.sh [--ranks 2] [--steps 30] [--models stories260k,llama-23m] [--skip-no-ac]
#                          [--quiet-timeout 120] [--out FILE] [--keep DIR]
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
exec python3 -S scripts/reference/bench_shard.py --recipe-bin "$RECIPE_BIN" "$@"

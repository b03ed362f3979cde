#!/usr/bin/env bash
# Benchmark (not a test): `recipe preprocess` against Hugging Face `datasets.map` with the fast
# tokenizer, doing the same tokenization and masking of the same synthetic data (an alpaca and a
# chatml chat dataset, 20,000 generated rows each) on the same CPU. Prints tokens/s of both, best
# of 3 runs each, their ratio, and whether both produced the same samples; writes a JSON summary
# (--out, default /tmp/bench-preprocess.json). About 5 minutes on a 2-core machine with a release
# build. Details: scripts/reference/bench_preprocess.py.
#
#   scripts/bench-preprocess.sh [--rows N] [--runs N] [--cases alpaca,chat] [--num-proc N]
#                               [--out FILE] [--keep DIR] [--quiet-timeout S] [--retries N]
#
# RECIPE_BIN=/path/to/recipe skips the build and benchmarks that binary instead.
# The reference stack is expected under $RECIPE_CACHE: `datasets` and its dependencies in
# bench-py, the rest of scripts/reference/requirements.txt in ref-py, torch in torch-2.11.0
# (PYTHONPATH overrides all three). bench-py, once:
#   pip install --target "$RECIPE_CACHE/bench-py" datasets==5.2.0
# (it resolves to: datasets 5.2.0, pyarrow 26.0.1, pandas 3.1.1, dill 0.4.1, multiprocess 0.70.19,
# xxhash 4.1.0, fsspec 2026.9.0, filelock 4.3.1, python-dateutil 4.0.0, tzdata 2026.6,
# typing_extensions 4.16.0, and copies of packages ref-py already has at the same versions; no torch)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
source scripts/env.sh
cd "$REPO"
if [ -z "${RECIPE_BIN:-}" ]; then
  cargo build --locked --release
  RECIPE_BIN="$CARGO_TARGET_DIR/release/recipe"
fi
export PYTHONPATH="${PYTHONPATH:-$RECIPE_CACHE/bench-py:$RECIPE_CACHE/ref-py:$RECIPE_CACHE/torch-2.11.0}"
exec python3 -S scripts/reference/bench_preprocess.py --recipe-bin "$RECIPE_BIN" "$@"

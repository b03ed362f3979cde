#!/usr/bin/env bash
# The test command: installs what it needs (PyTorch 2.11.0 for libtorch, once, into the cache),
# builds, and runs the whole test suite with the executor, then checks that the validate/plan-only
# binary (no libtorch) still builds.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export CI="${CI:-true}"   # insta: fail on snapshot changes instead of writing .snap.new files
cargo test --locked
cargo build --locked --no-default-features

# Interop, not only self-consistency: the folders tests/outputs.rs left (adapters, full, merged,
# quantized and reward-model outputs) must load in peft / transformers / bitsandbytes with recipe's
# logits. The pinned reference stack (scripts/reference/requirements.txt) goes into the cache once.
REF_PY="$RECIPE_CACHE/ref-py"
if [ ! -f "$REF_PY/.complete" ]; then
  echo "installing the reference stack (transformers, peft, bitsandbytes; pinned) into $REF_PY (once)" >&2
  rm -rf "$REF_PY"
  grep -v -e '^#' -e '^torch==' scripts/reference/requirements.txt \
    | python3 -m pip install --quiet --disable-pip-version-check --no-input --target "$REF_PY" --no-deps -r /dev/stdin >&2
  touch "$REF_PY/.complete"
fi
PYTHONPATH="$REF_PY:$RECIPE_CACHE/torch-2.11.0" python3 -S scripts/reference/check_outputs.py \
  "$CARGO_TARGET_DIR/tmp/outputs-check" --report "$CARGO_TARGET_DIR/tmp/outputs_check.json"

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

# Bottleneck adapters load in AdapterHub's `adapters` (tests/bottleneck.rs left the folders). adapters pins
# its own transformers line, so its pinned stack (scripts/reference/requirements-adapters.txt) goes into its
# own folder in the cache, once, ahead of the main reference stack on PYTHONPATH.
REF_ADAPTERS="$RECIPE_CACHE/ref-adapters"
if [ ! -f "$REF_ADAPTERS/.complete" ]; then
  echo "installing AdapterHub's adapters (with its transformers; pinned) into $REF_ADAPTERS (once)" >&2
  rm -rf "$REF_ADAPTERS"
  grep -v '^#' scripts/reference/requirements-adapters.txt \
    | python3 -m pip install --quiet --disable-pip-version-check --no-input --target "$REF_ADAPTERS" --no-deps -r /dev/stdin >&2
  touch "$REF_ADAPTERS/.complete"
fi
PYTHONPATH="$REF_ADAPTERS:$REF_PY:$RECIPE_CACHE/torch-2.11.0" python3 -S scripts/reference/check_bottleneck_outputs.py \
  "$CARGO_TARGET_DIR/tmp/bottleneck-check" --report "$CARGO_TARGET_DIR/tmp/bottleneck_outputs_check.json"

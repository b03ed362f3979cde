#!/usr/bin/env bash
# GPU check (not a test): run on the device machine from the repo root with a recipe binary built
# here (it links libtorch from the PyTorch 2.11.0 wheel, the same family the device has):
#
#   here:   mkdir -p .device && cp "$CARGO_TARGET_DIR/release/recipe" .device/ && echo /.device/ >> .git/info/exclude
#           (and for the flash varlen check, the library's test binary: cargo test --release --lib --no-run,
#           copied to .device/lib-tests)
#   device: run(command="scripts/device/gpu-check.sh .device/recipe $OUT --test-bin .device/lib-tests",
#               carry=[".device"], timeout_s=540)
#
# Writes gpu-check.json under the output folder. Details: scripts/device/gpu_check.py.
# Off the device, `scripts/device/gpu-check.sh BIN OUT --tiny` checks the plumbing on CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="$1"; OUT="$2"; shift 2
TORCH_LIB="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
exec python3 scripts/device/gpu_check.py --recipe-bin "$BIN" --out "$OUT" "$@"

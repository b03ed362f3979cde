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

#!/usr/bin/env bash
# A longer fuzz run of the recipe loader and planner than the test suite's (tests/fuzz_loader.rs):
#   scripts/fuzz-loader.sh [CASES]   (default 200000 per test)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
FUZZ_CASES="${1:-200000}" cargo test --locked --test fuzz_loader -- --nocapture

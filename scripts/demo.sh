#!/usr/bin/env bash
# The main job on the bundled default: the demo recipe on the real tiny model (models/stories260k).
# Installs what it needs (PyTorch 2.11.0, once, into the cache), builds, then checks the recipe and
# compiles it into a plan, and shows the devices libtorch sees. (`recipe run` joins this script
# when the executor lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --locked --release
bin="$CARGO_TARGET_DIR/release/recipe"
recipe_file="${1:-recipes/demo/stories260k-lora.yaml}"
echo "== recipe validate $recipe_file"
"$bin" validate "$recipe_file"
echo "== recipe plan $recipe_file"
"$bin" plan "$recipe_file"
echo "== recipe env"
"$bin" env

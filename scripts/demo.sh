#!/usr/bin/env bash
# The main job on the bundled default: the demo recipe on the real tiny model (models/stories260k).
# Installs what it needs (PyTorch 2.11.0, once, into the cache), builds, checks the recipe,
# compiles it into a plan, shows the devices libtorch sees, then trains: LoRA on a bundled
# Shakespeare excerpt, about a minute on a 2-core CPU. Outputs land in ./outputs/stories260k-lora.
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
echo "== recipe run $recipe_file"
# The demo replaces its previous outputs (a recipe's output_dir holding another run is refused otherwise).
"$bin" run "$recipe_file" --set overwrite_output_dir=true

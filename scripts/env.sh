# Sourced by the other scripts: installs PyTorch 2.11.0 (the libtorch that tch 0.24 needs) into a cache
# outside the clone, once, and exports the variables the build needs.
#   RECIPE_CACHE      where libtorch and the cargo target folder live (default ~/.cache/recipe)
#   CARGO_TARGET_DIR  kept in the cache so builds stay warm across clones (override freely)
set -euo pipefail
export RECIPE_CACHE="${RECIPE_CACHE:-$HOME/.cache/recipe}"
TORCH_VERSION=2.11.0
TORCH_PREFIX="$RECIPE_CACHE/torch-$TORCH_VERSION"
if [ ! -f "$TORCH_PREFIX/.complete" ]; then
  echo "installing torch==$TORCH_VERSION from PyPI into $TORCH_PREFIX (once; about 5 GB)" >&2
  rm -rf "$TORCH_PREFIX"
  mkdir -p "$RECIPE_CACHE"
  python3 -m pip install --quiet --disable-pip-version-check --no-input \
    --target "$TORCH_PREFIX" "torch==$TORCH_VERSION" >&2
  touch "$TORCH_PREFIX/.complete"
fi
export LIBTORCH="$TORCH_PREFIX/torch"
export LIBTORCH_CXX11_ABI=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$RECIPE_CACHE/target}"

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

# Headers for the c10d shim (src/exec/c10d.cpp, compiled by build.rs against the wheel's own headers):
# Gloo's headers, which the wheel does not ship, from Debian's libgloo-dev (headers only; config.h
# reduced to the TCP transport), and the CUDA headers ProcessGroupNCCL.hpp needs beyond the wheel's
# (crt/, nv/target) from PyPI. Both are small and land in the cache once.
GLOO_DEB=libgloo-dev_0.0~git20220518.5b14351-3_amd64.deb
GLOO_SHA256=80529c9fd8af452faf489e686b94bf87075965c40673803810c4f41634b1e299
GLOO_PREFIX="$RECIPE_CACHE/gloo-0.0-git20220518"
if [ ! -f "$GLOO_PREFIX/.complete" ]; then
  echo "fetching Gloo's headers (Debian $GLOO_DEB) into $GLOO_PREFIX (once)" >&2
  rm -rf "$GLOO_PREFIX" && mkdir -p "$GLOO_PREFIX"
  curl -fsSL --retry 3 -o "$GLOO_PREFIX/$GLOO_DEB" "http://deb.debian.org/debian/pool/main/g/gloo/$GLOO_DEB"
  echo "$GLOO_SHA256  $GLOO_PREFIX/$GLOO_DEB" | sha256sum -c --quiet - >&2
  dpkg-deb -x "$GLOO_PREFIX/$GLOO_DEB" "$GLOO_PREFIX/deb"
  mkdir -p "$GLOO_PREFIX/include"
  cp -r "$GLOO_PREFIX/deb/usr/include/gloo" "$GLOO_PREFIX/include/"
  sed -i -e 's/GLOO_USE_REDIS 1/GLOO_USE_REDIS 0/' -e 's/GLOO_USE_IBVERBS 1/GLOO_USE_IBVERBS 0/' \
    -e 's/GLOO_HAVE_TRANSPORT_IBVERBS 1/GLOO_HAVE_TRANSPORT_IBVERBS 0/' "$GLOO_PREFIX/include/gloo/config.h"
  cp "$GLOO_PREFIX/deb/usr/share/doc/libgloo-dev/copyright" "$GLOO_PREFIX/include/gloo/COPYRIGHT" 2>/dev/null || true
  touch "$GLOO_PREFIX/.complete"
fi
export RECIPE_GLOO_INCLUDE="$GLOO_PREFIX/include"
CUDA_HEADERS="$RECIPE_CACHE/cuda-headers-13.0"
if [ ! -f "$CUDA_HEADERS/.complete" ]; then
  echo "installing CUDA 13.0 headers (nvidia-cuda-crt, nvidia-cuda-cccl) into $CUDA_HEADERS (once)" >&2
  rm -rf "$CUDA_HEADERS"
  python3 -m pip install --quiet --disable-pip-version-check --no-input --no-deps --target "$CUDA_HEADERS" \
    "nvidia-cuda-crt==13.0.88" "nvidia-cuda-cccl==13.0.85" >&2
  touch "$CUDA_HEADERS/.complete"
fi
export RECIPE_CUDA_INCLUDE="$CUDA_HEADERS/nvidia/cu13/include"

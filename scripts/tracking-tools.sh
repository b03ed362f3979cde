#!/usr/bin/env bash
# Installs the experiment-tracking tools the tests read recipe's tracking output back with, each
# pinned, from PyPI, into its own folder of the cache (once), and prints that folder (for PYTHONPATH):
#   scripts/tracking-tools.sh tensorboard|mlflow|wandb
# tensorboard: TensorBoard's own event reader (event_accumulator) for the event files;
# mlflow: `mlflow server` (SQLite store, local artifact root) for the REST client;
# wandb: `wandb leet inspect --json` (wandb-core's reader of .wandb files; no network).
# The folders are byte-compiled once, so a server starts in seconds (the tests' environment may
# set PYTHONDONTWRITEBYTECODE).
set -euo pipefail
RECIPE_CACHE="${RECIPE_CACHE:-$HOME/.cache/recipe}"
case "${1:-}" in
  tensorboard) spec="tensorboard==2.21.0" ;;
  mlflow) spec="mlflow==3.17.2" ;;
  wandb) spec="wandb==0.31.0" ;;
  *) echo "usage: $0 tensorboard|mlflow|wandb" >&2; exit 2 ;;
esac
prefix="$RECIPE_CACHE/${spec/==/-}"
mkdir -p "$RECIPE_CACHE"
# Tests run side by side: one installs, the others wait for it.
exec 9>"$prefix.lock"
flock 9
if [ ! -f "$prefix/.complete" ]; then
  echo "installing $spec from PyPI into $prefix (once)" >&2
  rm -rf "$prefix"
  python3 -m pip install --quiet --disable-pip-version-check --no-input --target "$prefix" "$spec" >&2
  python3 -m compileall -q -j 0 "$prefix" >/dev/null 2>&1 || true
  touch "$prefix/.complete"
fi
echo "$prefix"

#!/usr/bin/env bash
# The README's screenshot of a run in MLflow's UI: starts a local `mlflow server` (SQLite store,
# temporary artifact root; the pinned mlflow of scripts/tracking-tools.sh), trains the demo recipe
# with MLflow tracking, and photographs the run's metrics page with headless Chromium
# (Debian's `chromium` package) into docs/mlflow-run.png.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
prefix=$(scripts/tracking-tools.sh mlflow)
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PYTHONPATH="$prefix" setsid python3 -S -m mlflow server --host 127.0.0.1 --port "$port" --workers 1 \
  --backend-store-uri "sqlite:///$work/mlflow.db" --artifacts-destination "$work/artifacts" >"$work/server.log" 2>&1 &
server=$!
trap 'kill -- -"$server" 2>/dev/null || true; rm -rf "$work"' EXIT
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.5; done
cargo build --quiet
"$CARGO_TARGET_DIR/debug/recipe" run recipes/demo/stories260k-lora.yaml --device cpu --no-progress \
  --set "mlflow_tracking_uri=http://127.0.0.1:$port" --set mlflow_experiment_name=recipe-demo --set mlflow_run_name=stories260k-lora \
  --set hf_mlflow_log_artifacts=true --set "output_dir=$work/out" | tee "$work/run.txt"
url=$(sed -n 's/^tracked    MLflow //p' "$work/run.txt")
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1440,1100 \
  --virtual-time-budget=60000 --run-all-compositor-stages-before-draw --screenshot="$PWD/docs/mlflow-run.png" "$url/model-metrics" 2>/dev/null
echo "docs/mlflow-run.png: $url/model-metrics"

#!/usr/bin/env bash
# Benchmark: `recipe validate` on 1,000 recipe files (copies of recipes/ with varied values).
# Prints the total time and the time per hundred files. The bar (issue 2): well under a second
# per hundred files on a 2-core machine. Usage: scripts/bench-validate.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000}"
cargo build --release --no-default-features --quiet
bin=target/release/recipe
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/recipes/demo"
cp -r models data "$dir/"
cp -r schema "$dir/"
sources=(recipes/*.yaml)
for i in $(seq 1 "$n"); do
  src="${sources[$((i % ${#sources[@]}))]}"
  sed "s/^seed: .*//; \$a seed: $i" "$src" > "$dir/recipes/r$i.yaml"
done
start=$(date +%s.%N)
"$bin" validate "$dir/recipes" | tail -1
end=$(date +%s.%N)
python3 - "$start" "$end" "$n" <<'PY'
import sys
start, end, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
total = end - start
print(f"validated {n} recipes in {total:.3f} s: {100 * total / n:.4f} s per hundred files")
PY

#!/usr/bin/env bash
# Validates every config under a checkout of Axolotl's examples/ folder and prints how many are valid,
# refused by name (every error carries an `unsupported-*` rule), refused otherwise, or crashed (an exit code
# other than 0/1), with the most frequent causes. Issue 15 measures "Axolotl's configs carry over" with it.
#
#   scripts/axolotl-examples.sh PATH/TO/axolotl[/examples] [--list]
#
# Uses the validate/plan-only binary (no libtorch), built here if needed (RECIPE_BIN: a binary to use
# instead). Axolotl's configs name their DeepSpeed file relative to Axolotl's repository root
# (`deepspeed: deepspeed_configs/zero2.json`); recipe reads it relative to the recipe file, so such a
# path is handed over with `--set deepspeed=...`, resolved in the checkout's deepspeed_configs/, else in
# tests/fixtures/deepspeed (the same files, copied from Axolotl @067b021c).
set -euo pipefail
cd "$(dirname "$0")/.."
src="${1:?usage: scripts/axolotl-examples.sh PATH/TO/axolotl [--list]}"
[ -d "$src/examples" ] && src="$src/examples"
list="${2:-}"
ds_configs="$(cd "$src/.." && pwd)/deepspeed_configs"
[ -d "$ds_configs" ] || ds_configs="$PWD/tests/fixtures/deepspeed"
if [ -n "${RECIPE_BIN:-}" ]; then
  bin="$RECIPE_BIN"
else
  target="${CARGO_TARGET_DIR:-$HOME/.cache/recipe/target}"
  cargo build --quiet --release --no-default-features --target-dir "$target/validate-only"
  bin="$target/validate-only/release/recipe"
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
find "$src" -name '*.yml' -o -name '*.yaml' | sort > "$out/files"
while read -r f; do
  ds="$(sed -n 's/^deepspeed:[[:space:]]*\([^#[:space:]][^#[:space:]]*\).*/\1/p' "$f" | head -n 1)"
  extra=()
  if [ -n "$ds" ] && [ ! -e "$(dirname "$f")/$ds" ] && [ -e "$ds_configs/${ds#deepspeed_configs/}" ]; then
    extra=(--set "deepspeed=$ds_configs/${ds#deepspeed_configs/}")
  fi
  set +e
  "$bin" validate --format json "$f" "${extra[@]}" > "$out/one.json" 2> "$out/one.err"
  rc=$?
  set -e
  python3 - "$f" "$rc" "$out/one.json" >> "$out/results.jsonl" <<'PY'
import json, sys
path, rc, report = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    doc = json.load(open(report))
except Exception:
    doc = None
if rc not in (0, 1) or doc is None:
    print(json.dumps({"file": path, "class": "crashed", "causes": [f"exit {rc}"]}))
    sys.exit()
errors = [d for d in doc["diagnostics"] if d["severity"] == "error"]
if not errors:
    cls = "valid"
elif all(d["rule"].startswith("unsupported-") for d in errors):
    cls = "refused by name"
else:
    cls = "refused otherwise"
def cause(d):
    msg = d["message"].split(":")[0] if d["rule"] == "value" else ""
    return f'{d["rule"]} {d["key_path"]}' + (f" ({msg[:60]})" if msg else "")
print(json.dumps({"file": path, "class": cls, "causes": sorted({cause(d) for d in errors})}))
PY
done < "$out/files"
python3 - "$out/results.jsonl" "$list" <<'PY'
import collections, json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
classes = collections.Counter(r["class"] for r in rows)
print(f"{len(rows)} configs")
for c in ["valid", "refused by name", "refused otherwise", "crashed"]:
    print(f"  {c:<18} {classes.get(c, 0):>4}")
causes = collections.Counter(c for r in rows for c in r["causes"])
print("\nmost frequent causes (files):")
for c, n in causes.most_common(40):
    print(f"  {n:>4}  {c}")
if sys.argv[2] == "--list":
    for r in rows:
        print(f'{r["class"]:<18} {r["file"]}  {"; ".join(r["causes"])}')
PY

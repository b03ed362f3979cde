#!/usr/bin/env bash
# Validates every config under a checkout of Axolotl's examples/ folder and prints how many are valid,
# refused by name (every error carries an `unsupported-*` rule), refused otherwise, or crashed (an exit code
# other than 0/1), with the most frequent causes. Issue 15 measures "Axolotl's configs carry over" with it.
#
#   scripts/axolotl-examples.sh PATH/TO/axolotl[/examples] [--list] [--axolotl-verdict OUT.jsonl]
#
# --axolotl-verdict: Axolotl's own verdict on the same files, written by scripts/reference/axolotl_verdict.py.
# With it, a file refused otherwise is counted "refused, as Axolotl" when Axolotl's validation rejects it too,
# or "refused: keys Axolotl drops" when each of its errors that is not `unsupported-*` is an `unknown-key`
# on a key Axolotl's schema has no field for (pydantic drops it unread); the rest stay "refused otherwise".
# It also lists the valid files that carry keys Axolotl drops (recipe accepts a key Axolotl never reads).
#
# Uses the validate/plan-only binary (no libtorch), built here if needed (RECIPE_BIN: a binary to use
# instead). Axolotl's configs name their DeepSpeed file relative to Axolotl's repository root
# (`deepspeed: deepspeed_configs/zero2.json`); recipe reads it relative to the recipe file, so such a
# path is handed over with `--set deepspeed=...`, resolved in the checkout's deepspeed_configs/, else in
# tests/fixtures/deepspeed (the same files, copied from Axolotl @067b021c).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/axolotl-examples.sh PATH/TO/axolotl [--list] [--axolotl-verdict OUT.jsonl]"
src="${1:?$usage}"
shift
[ -d "$src/examples" ] && src="$src/examples"
list=""
verdict=""
while [ $# -gt 0 ]; do
  case "$1" in
    --list) list="--list" ;;
    --axolotl-verdict) verdict="${2:?$usage}"; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$verdict" ]; then
  [ -f "$verdict" ] || { echo "no such file: $verdict" >&2; exit 2; }
  verdict="$(cd "$(dirname "$verdict")" && pwd)/$(basename "$verdict")"
fi
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
print(json.dumps({"file": path, "class": cls, "causes": sorted({cause(d) for d in errors}),
                  "errors": sorted({(d["rule"], d["key_path"]) for d in errors})}))
PY
done < "$out/files"
python3 - "$out/results.jsonl" "$list" "$src" "$verdict" <<'PY'
import collections, json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
names = ["valid", "refused by name", "refused otherwise", "crashed"]
if sys.argv[4]:
    # Axolotl's own verdict (scripts/reference/axolotl_verdict.py), by path relative to examples/
    verdicts = {v["file"]: v for v in map(json.loads, open(sys.argv[4]))}
    names[2:3] = ["refused, as Axolotl", "refused: keys Axolotl drops", "refused otherwise"]
    unread_valid = []
    for r in rows:
        v = verdicts.get(os.path.relpath(r["file"], sys.argv[3]))
        r["axolotl"] = v["verdict"] if v else "no verdict"
        if v is None:
            continue
        r["axolotl_errors"] = v["errors"]
        drops = set(v["dropped"]) | set(v["dropped_nested"])
        if r["class"] == "refused otherwise":
            own = [(rule, key) for rule, key in r["errors"] if not rule.startswith("unsupported-")]
            if v["verdict"] == "rejected":
                r["class"] = "refused, as Axolotl"
            elif not v["plugins_unavailable"] and all(rule == "unknown-key" and key in drops for rule, key in own):
                r["class"] = "refused: keys Axolotl drops"
        elif r["class"] == "valid" and drops:
            unread_valid.append((r["file"], sorted(drops)))
classes = collections.Counter(r["class"] for r in rows)
width = max([18] + [len(c) for c in names])
print(f"{len(rows)} configs")
for c in names:
    print(f"  {c:<{width}} {classes.get(c, 0):>4}")
if sys.argv[4]:
    print("\nAxolotl's own verdict on the files recipe refuses otherwise (files):")
    for (c, a), n in sorted(collections.Counter((r["class"], r["axolotl"]) for r in rows if r["class"] in names[2:5]).items()):
        print(f"  {n:>4}  {c} / Axolotl: {a}")
    print(f"\nvalid files with keys Axolotl drops unread (recipe accepts them): {len(unread_valid)}")
    for f, keys in unread_valid:
        print(f"  {os.path.relpath(f, sys.argv[3])}: {', '.join(keys)}")
causes = collections.Counter(c for r in rows for c in r["causes"])
print("\nmost frequent causes (files):")
for c, n in causes.most_common(40):
    print(f"  {n:>4}  {c}")
if sys.argv[2] == "--list":
    for r in rows:
        axolotl = f'  [Axolotl: {r["axolotl"]}{": " if r.get("axolotl_errors") else ""}{"; ".join(r.get("axolotl_errors", []))[:160]}]' if r["class"] in names[2:5] and "axolotl" in r else ""
        print(f'{r["class"]:<{width}} {r["file"]}  {"; ".join(r["causes"])}{axolotl}')
PY

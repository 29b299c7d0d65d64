#!/usr/bin/env bash
# run.sh: golden-test runner; runs the RUN lines of every passes/<pass>/<case>.sbpir through LLVM FileCheck.
#
# A case opens with `// RUN: <pipeline>` (one or more) and a line `// PROVES: <what it shows>`.
# In RUN lines, %s is the case file, %S its folder, %t a scratch file, %models the models/ folder; `sbpc` and
# `FileCheck` resolve to the built binary and LLVM's FileCheck.
# Cases with `// GOLDEN: whole-output` compare the whole output; UPDATE_GOLDEN=1 rewrites
# their CHECK lines from the current output (review the diff before committing).
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
SBPC="$(cd "$root" && realpath "${SBPC:-.build/debug/sbpc}")"
FILECHECK="${FILECHECK:-FileCheck}"
command -v "$FILECHECK" >/dev/null || { echo "run.sh: FileCheck not found (make deps installs llvm-14-tools)"; exit 2; }
shopt -s nullglob
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
passed=0; failed=0; failures=()
cases=("$root"/passes/*/*.sbpir)
[ ${#cases[@]} -gt 0 ] || { echo "run.sh: no golden cases under passes/"; exit 2; }
for f in "${cases[@]}"; do
  rel="${f#$root/}"
  dir="$(dirname "$f")"
  if ! grep -q '^// PROVES: ' "$f"; then
    echo "FAIL $rel: missing '// PROVES:' line"; failed=$((failed+1)); failures+=("$rel"); continue
  fi
  mapfile -t runs < <(sed -n 's|^// RUN: ||p' "$f")
  if [ ${#runs[@]} -eq 0 ]; then
    echo "FAIL $rel: no RUN line"; failed=$((failed+1)); failures+=("$rel"); continue
  fi
  if [ "${UPDATE_GOLDEN:-}" = 1 ] && grep -q '^// GOLDEN: whole-output' "$f"; then
    producer="${runs[0]%%|*FileCheck*}"
    producer="${producer//%models/$root/models}"; producer="${producer//%S/$dir}"; producer="${producer//%s/$f}"
    producer="${producer//%t/$scratch/t}"
    out="$(cd "$root" && PATH="$(dirname "$SBPC"):$PATH" bash -c "$producer")" || { echo "FAIL $rel: producer failed"; failed=$((failed+1)); continue; }
    tmp="$(mktemp)"
    grep -v '^// CHECK' "$f" > "$tmp"
    first=1
    while IFS= read -r line; do
      if [ $first = 1 ]; then echo "// CHECK: $line" >> "$tmp"; first=0
      elif [ -z "$line" ]; then echo "// CHECK-EMPTY:" >> "$tmp"
      else echo "// CHECK-NEXT: $line" >> "$tmp"; fi
    done <<< "$out"
    mv "$tmp" "$f"
    echo "UPDATED $rel"
  fi
  ok=1
  for r in "${runs[@]}"; do
    cmd="${r//%models/$root/models}"; cmd="${cmd//%S/$dir}"; cmd="${cmd//%s/$f}"; cmd="${cmd//%t/$scratch/t}"
    cmd="${cmd//FileCheck/$FILECHECK}"
    if ! (cd "$root" && PATH="$(dirname "$SBPC"):$PATH" bash -o pipefail -c "$cmd") > /tmp/golden.$$.log 2>&1; then
      ok=0; echo "FAIL $rel"; echo "  RUN: $r"; sed 's/^/  | /' /tmp/golden.$$.log | head -40
    fi
  done
  if [ $ok = 1 ]; then echo "PASS $rel"; passed=$((passed+1)); else failed=$((failed+1)); failures+=("$rel"); fi
done
rm -f /tmp/golden.$$.log
echo
echo "golden: $passed passed, $failed failed"
[ $failed -eq 0 ]

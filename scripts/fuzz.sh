#!/usr/bin/env bash
# Runs every fuzz target of the module for a bounded time each (default 5s).
set -euo pipefail
fuzztime="${1:-5s}"
export CGO_ENABLED=0
n=0
for pkg in $(go list -tags noxla ./...); do
  dir=$(go list -tags noxla -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "fuzz $pkg $target ($fuzztime)"
    go test -tags noxla -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" >/tmp/fuzz.$$.log 2>&1 || { cat /tmp/fuzz.$$.log; exit 1; }
    n=$((n+1))
  done
done
echo "fuzz: $n targets, $fuzztime each, no failures"

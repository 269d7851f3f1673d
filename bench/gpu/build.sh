#!/usr/bin/env bash
# Builds here (cgo; no GPU, CUDA or Python needed) everything bench/gpu/check.sh
# runs on the GPU machine, which has no Go toolchain and no network:
#   .carry/gpu/<pkg>.test.gz   test binaries (run from their package folder)
#   .carry/gpu/saferlhf.gz     the CLI with the XLA backend
# Binaries are stripped and gzipped to stay well inside the 64 MiB that travels.
# More test binaries: EXTRA_TEST_PKGS="./train/model ./train/ppo" bash bench/gpu/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.carry/gpu
rm -rf "$out"
mkdir -p "$out"
export CGO_ENABLED=1
flags=(-trimpath -ldflags=-s\ -w)
for pkg in ./native ./kernels/cuda ${EXTRA_TEST_PKGS:-}; do
  name=$(echo "${pkg#./}" | tr / _).test
  echo "build.sh: go test -c $pkg -> $out/$name"
  go test -c "${flags[@]}" -o "$out/$name" "$pkg"
done
echo "build.sh: go build ./cmd/saferlhf -> $out/saferlhf"
go build "${flags[@]}" -o "$out/saferlhf" ./cmd/saferlhf
git rev-parse HEAD >"$out/COMMIT" 2>/dev/null || true
gzip -9 "$out"/*.test "$out/saferlhf"
ls -l "$out"
total=$(du -cb "$out" | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "build.sh: carried $((total / 1048576)) MiB + tracked tree $((tree / 1048576)) MiB (limit 64 MiB for both)"
if [ $((total + tree)) -gt $((60 * 1048576)) ]; then
  echo "build.sh: WARNING: close to the 64 MiB transfer limit" >&2
fi

#!/usr/bin/env bash
# Compile every CUDA kernel source with plain nvcc for sm_80 and sm_90, the way a user's CUDA build
# would, so CUDA code cannot rot on machines without a GPU. Fails on compile errors and on any
# register spill reported by ptxas.
set -uo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || true)}
if [[ -z "$NVCC" ]]; then
  echo "check-cuda: nvcc not found, CUDA kernels not compile-checked"
  exit 0
fi
shopt -s nullglob
sources=(csrc/*.cu)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for arch in 80 90; do
  for src in "${sources[@]}"; do
    log="$tmp/$(basename "$src").sm$arch.log"
    if ! "$NVCC" -c -O3 -Icsrc/include -arch=sm_$arch -Xptxas -v \
        -o "$tmp/out.o" "$src" >"$log" 2>&1; then
      echo "check-cuda: $src failed to compile for sm_$arch:"; cat "$log"; status=1; continue
    fi
    if grep -E "[1-9][0-9]* bytes spill (stores|loads)" "$log" >/dev/null; then
      echo "check-cuda: $src spills registers on sm_$arch:"; grep -B2 "spill" "$log" | grep -E "Function properties|spill" ; status=1; continue
    fi
    echo "check-cuda: $src ok for sm_$arch ($(grep -c 'Used [0-9]* registers' "$log") kernels)"
  done
done
exit $status

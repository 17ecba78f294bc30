#!/usr/bin/env bash
# Compile every CUDA kernel source with plain nvcc for sm_80 and sm_90, the way a user's CUDA build
# would, so CUDA code cannot rot on machines without a GPU. Fails on compile errors and on any
# register spill reported by ptxas. With PYTHON set to an interpreter whose torch ships the c10/cuda
# headers (the CPU wheel does), also syntax-checks every C++ source, the torch glue (*_cuda_glue.cpp)
# included, as C++17: torch before 2.12 builds extensions as C++17 (the GPU machines' torch may be
# older than the one here), so a C++20-only construct would break the CUDA build there.
set -uo pipefail
cd "$(dirname "$0")/.."
# setuptools names an object after its source without the extension, so a .cpp and a .cu of the
# same name would both become one .o: ninja refuses the build ("multiple rules generate"), and the
# non-ninja build silently links one of them twice. The CUDA build would break only on a CUDA machine.
duplicates=$(for f in csrc/*.cpp csrc/*.cu; do basename "${f%.*}"; done | sort | uniq -d)
if [[ -n "$duplicates" ]]; then
  echo "check-cuda: sources that would compile to the same object file: $duplicates"
  exit 1
fi
echo "check-cuda: every source in csrc/ has its own object name"

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

if [[ -n "${PYTHON:-}" ]]; then
  # Ask nvcc where its runtime headers are (it may be a wrapper script far from the toolkit).
  header=$(echo '#include <cuda_runtime.h>' | "$NVCC" -E -x cu - 2>/dev/null | grep -o '"[^"]*/cuda_runtime.h"' | head -n 1)
  cuda_include=$(dirname "${header//\"/}")
  torch_includes=$("$PYTHON" -c "from torch.utils.cpp_extension import include_paths; print(' '.join(include_paths()))")
  flags=(-std=c++17 -fsyntax-only -fopenmp -DRHMFAST_WITH_CUDA -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE
         -isystem "$cuda_include" -Icsrc/include -Icsrc)
  for dir in $torch_includes; do flags+=(-isystem "$dir"); done
  flags+=(-isystem "$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")")
  # The CPU wheel lacks only the generated c10/cuda/impl/cuda_cmake_macros.h, hence the define above.
  export CXX17_FLAGS="${flags[*]}" TMP_LOGS="$tmp"
  # Two at a time: each file parses torch's headers (about 10 s).
  if ! printf '%s\n' csrc/*.cpp | xargs -P 2 -I{} bash -c '
      log="$TMP_LOGS/$(basename {}).c17.log"
      if g++ $CXX17_FLAGS {} 2>"$log"; then echo "check-cuda: {} parses as C++17"
      else echo "check-cuda: {} fails to parse as C++17:"; cat "$log"; exit 1; fi'; then
    status=1
  fi
fi
exit $status

#!/usr/bin/env bash
# Build fastbert's CUDA extension in CI (no GPU needed) and check it, without touching the CPU build.
#
#   .ci/build_cuda.sh            (from the repository root; .ci/run calls it)
#
# 1. a venv with the CUDA build of torch (FASTBERT_CUDA_VENV, default .venv-cuda in the repository; created when missing);
# 2. a copy of the tree (FASTBERT_CUDA_BUILD_DIR, default /tmp/fastbert-cuda-build), so the CPU build's
#    fastbert/_C*.so and build/ are never overwritten; ninja keeps the copy's objects between runs;
# 3. FASTBERT_CUDA=1 FASTBERT_PTXAS_VERBOSE=1 build for FASTBERT_CUDA_ARCHS (default 7.5;8.0;8.6;9.0+PTX);
#    fails on any ptxas spill (spill stores/loads > 0) in the -v output;
# 4. imports the module in that venv and fails unless every op of csrc/fastbert.cpp (backward ops included) has
#    a CUDA kernel, except fastbert.ops.CPU_ONLY_OPS (the int8 ops).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FASTBERT_CUDA_VENV:-$ROOT/.venv-cuda}"
BUILD="${FASTBERT_CUDA_BUILD_DIR:-/tmp/fastbert-cuda-build}"
TORCH_SPEC="${FASTBERT_CUDA_TORCH:-torch==2.14.1}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda-13.0}"
export FASTBERT_CUDA_ARCHS="${FASTBERT_CUDA_ARCHS:-7.5;8.0;8.6;9.0+PTX}"
export TORCH_CUDA_ARCH_LIST="$FASTBERT_CUDA_ARCHS"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV with $TORCH_SPEC"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "$TORCH_SPEC" numpy packaging ninja setuptools wheel pytest
fi
PY="$VENV/bin/python"
"$PY" - <<'PYEOF'
import torch
assert torch.version.cuda is not None, f"{torch.__version__} is not a CUDA build of torch"
print(f"== torch {torch.__version__}, CUDA {torch.version.cuda}")
PYEOF

echo "== copying the tree to $BUILD"
mkdir -p "$BUILD"
# Fresh sources; the copy's own build/ (ninja objects) survives, so rebuilds are incremental. The worktree's
# build/ and _C*.so are never copied.
find "$BUILD" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
tar -C "$ROOT" --exclude=.git --exclude='./.venv*' --exclude=./build --exclude='*.so' --exclude=__pycache__ --exclude=.pytest_cache \
  -cf - . | tar -C "$BUILD" -xf -

echo "== building (archs $FASTBERT_CUDA_ARCHS, MAX_JOBS=$MAX_JOBS)"
cd "$BUILD"
# The spill check reads ptxas' output, which only a compile prints: always recompile the CUDA objects
# (the C++ objects stay incremental).
rm -f build/temp*/csrc/cuda/*.o
log="$BUILD/build.log"
b0=$(date +%s)
if ! FASTBERT_CUDA=1 FASTBERT_PTXAS_VERBOSE=1 "$PY" setup.py build_ext --inplace >"$log" 2>&1; then
  tail -n 80 "$log"
  echo "FAIL: the CUDA build failed (full log: $log)"
  exit 1
fi
b1=$(date +%s)
echo "== build took $((b1 - b0)) s"

# ptxas -v prints, per kernel and arch: "N bytes stack frame, S bytes spill stores, L bytes spill loads".
spills=$(grep -E "bytes spill stores|bytes spill loads" "$log" | grep -Ev " 0 bytes spill stores, 0 bytes spill loads" || true)
kernels=$(grep -c "bytes spill stores" "$log" || true)
echo "== ptxas reports for $kernels kernel compilations"
if [ "$kernels" -eq 0 ] && grep -q "\.cu" <<<"$(ls csrc/cuda)"; then
  echo "FAIL: no ptxas -v output found (was FASTBERT_PTXAS_VERBOSE honoured?)"
  exit 1
fi
if [ -n "$spills" ]; then
  echo "FAIL: ptxas spills registers in:"
  # The kernel and arch of each report: the "Compiling entry function 'NAME' for 'ARCH'" line before it.
  awk "/Compiling entry function/ {match(\$0, /'[^']*' for '[^']*'/); k = substr(\$0, RSTART, RLENGTH)}
       /bytes spill stores/ && !/ 0 bytes spill stores, 0 bytes spill loads/ {print \"  \" k \":\" \$0}" "$log" |
    (c++filt 2>/dev/null || cat) | head -60 || true
  exit 1
fi
grep -E "Used [0-9]+ registers" "$log" | sed -E 's/.*(Used [0-9]+ registers).*/\1/' | sort | uniq -c | sort -rn | head -5 || true

echo "== importing and checking the CUDA kernels"
FASTBERT_QUIET=1 "$PY" - <<'PYEOF'
import re, sys
import torch
import fastbert
from fastbert import _C  # raises if the extension does not load
from fastbert.ops import CPU_ONLY_OPS
src = open("csrc/fastbert.cpp").read()
names = re.findall(r'm\.def\(\s*"(\w+)\(', src)
assert names, "no op schemas found in csrc/fastbert.cpp"
has = {n: torch._C._dispatch_has_kernel_for_dispatch_key(f"fastbert::{n}", "CUDA") for n in names}
print(f"   fastbert.__file__ = {fastbert.__file__}; cuda_archs = {_C.cuda_archs()}")
print(f"   ops with a CUDA kernel: {[n for n in names if has[n]]}")
missing = [n for n in names if not has[n] and n not in CPU_ONLY_OPS]
if missing:
    sys.exit(f"FAIL: no CUDA kernel for {missing}")
PYEOF
echo "== OK: CUDA extension built and checked in $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# Builds `infdit` with CUDA on a machine that has neither a GPU nor a CUDA install.
#
# nvcc, headers and the runtime libraries come from NVIDIA's PyPI wheels, pinned to the
# CUDA 13.0 line: a CUDA 13.0 driver (R580) cannot load PTX from newer compilers, and the
# nvvm wheel is not pinned by nvcc's own, so it is pinned here explicitly. libcuda (the
# driver) is only needed to link; a stub with the same symbols stands in for it, and the
# real one is found on the GPU machine at run time.
#
# Usage: scripts/build-cuda.sh [OUT_DIR]      (default OUT_DIR: dist/cuda)
# Env:   CUDA_COMPUTE_CAP (default 90: H100/H200), CUDA_HOME (use an existing toolkit
#        instead of the wheels), CUDA_TOOLS (where the wheels go, default .cuda-tools).
#
# With a regular CUDA toolkit installed, none of this is needed:
#   CUDA_COMPUTE_CAP=90 cargo build --release --features cuda
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-dist/cuda}
TOOLS=${CUDA_TOOLS:-$PWD/.cuda-tools}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}

if [ -z "${CUDA_HOME:-}" ]; then
  if [ ! -x "$TOOLS/venv/bin/python" ]; then
    python3 -m venv "$TOOLS/venv"
  fi
  "$TOOLS/venv/bin/pip" install -q \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14
  CUDA_HOME=$("$TOOLS/venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
  export CUDA_HOME
  # The wheels ship only versioned sonames; the linker wants the plain names.
  (cd "$CUDA_HOME/lib" && for l in cublas cublasLt cudart nvrtc; do ln -sf "lib$l.so.13" "lib$l.so"; done \
    && ln -sf libcurand.so.10 libcurand.so)
  # Link-time stand-in for the driver library: every driver-API symbol cudarc binds.
  STUB="$CUDA_HOME/lib/stubs"
  if [ ! -e "$STUB/libcuda.so" ]; then
    mkdir -p "$STUB"
    cargo fetch --locked >/dev/null
    CUDARC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-* | sort -V | tail -1)
    grep -ohE '^\s+(pub )?fn cu[A-Za-z0-9_]+\(' "$CUDARC/src/driver/sys/"*.rs \
      | sed -E 's/.*fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u \
      | awk '{print "void " $1 "(void) {}"}' > "$STUB/stub.c"
    gcc -shared -fPIC -o "$STUB/libcuda.so.1" -Wl,-soname,libcuda.so.1 "$STUB/stub.c"
    ln -sf libcuda.so.1 "$STUB/libcuda.so"
  fi
  export LIBRARY_PATH="$CUDA_HOME/lib:$STUB:${LIBRARY_PATH:-}"
fi
export CUDA_PATH=$CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
nvcc --version | tail -1

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/cuda}
cargo build --release --locked --features cuda
mkdir -p "$OUT"
cp "$CARGO_TARGET_DIR/release/infdit" "$OUT/infdit"
xz -T2 -6 -kf "$OUT/infdit"
cp scripts/gpu-bench.sh "$OUT/"
echo "built $OUT/infdit ($(du -h "$OUT/infdit" | cut -f1)), compressed: $OUT/infdit.xz ($(du -h "$OUT/infdit.xz" | cut -f1))"

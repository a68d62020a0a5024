#!/usr/bin/env bash
# One-call GPU check for a machine with an NVIDIA GPU, the CUDA 13 runtime and no Rust:
# bf16-vs-f32 parity on the reference fixtures, then seconds per network evaluation and
# peak device memory of the released config (random weights) at 1024², 2048², 4096² in
# block mode (auto batch under --max-memory) and full mode where it fits.
#
# Usage (from the repository root, with the binary from scripts/build-cuda.sh):
#   scripts/gpu-bench.sh [BINARY] [OUT_DIR]      BINARY may be .xz; OUT_DIR default: gpu-bench-out
# Prints a table and writes OUT_DIR/results.json. Sized to finish in under 8 minutes on an H100.
set -uo pipefail
BIN=${1:-dist/cuda/infdit.xz}
OUT=${2:-${OUT:-gpu-bench-out}}
BUDGET=${GPU_BENCH_BUDGET:-8G}
mkdir -p "$OUT"
if [[ "$BIN" == *.xz ]]; then xz -dc "$BIN" > "$OUT/infdit" && chmod +x "$OUT/infdit" && BIN="$OUT/infdit"; fi
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== parity: bf16 and f32 on the GPU against the reference (f32) fixtures"
F=tests/fixtures
for dt in f32 bf16; do
  for c in case_a_sigma2p5 case_a_sigma0p05; do
    for mode in "full" "blocks --block-batch 2"; do
      "$BIN" parity denoise --model $F/tiny --case $F/$c.safetensors --out "$OUT/p.safetensors" \
        --device cuda --dtype $dt --mode $mode >/dev/null 2>"$OUT/err.txt" \
        && echo "$dt $c $mode: $("$BIN" parity diff "$OUT/p.safetensors" $F/$c.safetensors | grep denoised)" \
        || echo "$dt $c $mode: FAILED $(tail -1 "$OUT/err.txt")"
    done
  done
done | tee "$OUT/parity.txt"

# Peak device memory of a command: poll nvidia-smi while it runs.
peak_mem() {
  local log="$1"; shift
  ( while sleep 0.2; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done ) > "$log" &
  local poll=$!
  "$@"; local rc=$?
  kill $poll 2>/dev/null; wait $poll 2>/dev/null
  echo "peak_device_mib=$(sort -n "$log" | tail -1) rc=$rc"
}

echo "== speed: released config (28 layers, hidden 1280), random weights, bf16"
base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
echo "device memory in use before: ${base} MiB"
{
  for size in 1024 2048 4096; do
    batches="auto"
    [ "$size" -le 2048 ] && batches="auto,full"
    for b in ${batches//,/ }; do
      line=$(timeout 150 bash -c "$(declare -f peak_mem); peak_mem '$OUT/mem.log' '$BIN' bench engine-one --config released --device cuda --dtype bf16 --size $size --batch $b --max-memory $BUDGET --repeat 2" 2>"$OUT/err.txt" | tr '\n' ' ')
      echo "$size $b ${line:-FAILED $(tail -1 "$OUT/err.txt")}"
    done
  done
} | tee "$OUT/speed.txt"

python3 - "$OUT" "$base" <<'PY'
import json, re, sys
out, base = sys.argv[1], int(sys.argv[2] or 0)
rows = []
for line in open(f"{out}/speed.txt"):
    m = re.match(r"(\d+) (\S+) (\{.*\})\s*peak_device_mib=(\d+) rc=(\d+)", line.strip())
    if m:
        r = json.loads(m.group(3)); r["peak_device_mib"] = int(m.group(4)) - base; rows.append(r)
parity = [l.strip() for l in open(f"{out}/parity.txt")]
json.dump({"gpu": open(f"{out}/gpu.txt").read().strip(), "parity": parity, "speed": rows}, open(f"{out}/results.json", "w"), indent=1)
print(f"{'size':>6} {'batch':>9} {'s/NFE':>8} {'peak GiB':>9}")
for r in rows:
    print(f"{r['width']:>6} {r['batch']:>9} {r['seconds_per_nfe']:>8.3f} {r['peak_device_mib']/1024:>9.2f}")
PY

#!/usr/bin/env bash
# One-call GPU check for a machine with an NVIDIA GPU, the CUDA 13 runtime and no Rust:
# bf16/f16-vs-f32 parity on the reference fixtures, the fused attention kernel's speed and
# error at the released shapes, then seconds per network evaluation and
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

echo "== parity: each dtype on the GPU against the reference (f32) fixtures; half precision with the fused attention kernel and with the composed one"
F=tests/fixtures
for run in "f32 fused" "bf16 fused" "bf16 fused w4" "bf16 composed" "f16 fused"; do
  set -- $run; dt=$1; attn=$2; shape=${3:-w8}
  for c in case_a_sigma2p5 case_a_sigma0p05; do
    for mode in "full" "blocks --block-batch 2"; do
      INFDIT_ATTENTION=$attn INFDIT_FLASH_SHAPE=$shape timeout 60 "$BIN" parity denoise --model $F/tiny --case $F/$c.safetensors --out "$OUT/p.safetensors" \
        --device cuda --dtype $dt --mode $mode >/dev/null 2>"$OUT/err.txt" \
        && echo "$dt $attn-$shape $c $mode: $("$BIN" parity diff "$OUT/p.safetensors" $F/$c.safetensors | grep denoised)" \
        || echo "$dt $attn-$shape $c $mode: FAILED $(tail -1 "$OUT/err.txt")"
    done
  done
done | tee "$OUT/parity.txt"

echo "== attention kernel at the released shapes (block: 1024 queries over 4096 keys; cross: over 2304), head dim 80"
{
  for run in "bf16 4096 w8" "bf16 2304 w8" "f16 4096 w8" "bf16 4096 w4" "bf16 2304 w4"; do
    set -- $run
    INFDIT_FLASH_SHAPE=$3 timeout 120 "$BIN" bench attention --device cuda --dtype $1 --blocks 256 --heads 16 --queries 1024 --keys $2 --head-dim 80 --repeat 10 2>"$OUT/err.txt" \
      | sed "s/^{/{\"kernel\":\"$3\",/" || echo "{\"failed\": \"$run: $(tail -1 "$OUT/err.txt" | tr -d '"')\"}"
  done
} | tee "$OUT/attention.txt"

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
  for case in "1024 auto fused" "1024 full fused" "1024 auto composed" "2048 auto fused" "2048 auto fused w4" "2048 full fused" "4096 auto fused"; do
    set -- $case; size=$1; b=$2; attn=$3; shape=${4:-w8}
    line=$(INFDIT_ATTENTION=$attn INFDIT_FLASH_SHAPE=$shape timeout 150 bash -c "$(declare -f peak_mem); peak_mem '$OUT/mem.log' '$BIN' bench engine-one --config released --device cuda --dtype bf16 --size $size --batch $b --max-memory $BUDGET --repeat 2" 2>"$OUT/err.txt" | tr '\n' ' ')
    echo "$size $b $attn-$shape ${line:-FAILED $(tail -1 "$OUT/err.txt")}"
  done
} | tee "$OUT/speed.txt"

python3 - "$OUT" "$base" <<'PY'
import json, re, sys
out, base = sys.argv[1], int(sys.argv[2] or 0)
rows = []
for line in open(f"{out}/speed.txt"):
    m = re.match(r"(\d+) (\S+) (\S+) (\{.*\})\s*peak_device_mib=(\d+) rc=(\d+)", line.strip())
    if m:
        r = json.loads(m.group(4)); r["attention"] = m.group(3); r["peak_device_mib"] = int(m.group(5)) - base; rows.append(r)
attention = []
for line in open(f"{out}/attention.txt"):
    try:
        attention.append(json.loads(line))
    except ValueError:
        pass
parity = [l.strip() for l in open(f"{out}/parity.txt")]
json.dump({"gpu": open(f"{out}/gpu.txt").read().strip(), "parity": parity, "attention": attention, "speed": rows},
          open(f"{out}/results.json", "w"), indent=1)
print(f"{'attention shape':>26} {'kernel':>6} {'dtype':>5} {'fused':>5} {'ms':>8} {'TFLOP/s':>8} {'composed ms':>11} {'max|diff|':>9}")
for a in attention:
    if "shape" in a:
        print(f"{str(a['shape']):>26} {a.get('kernel', ''):>6} {a['dtype']:>5} {str(a['fused']):>5} {a['ms']:>8.2f} {a['tflops']:>8.1f} {a['composed_ms']:>11.2f} {a['max_abs_diff']:>9.2e}")
print(f"{'size':>6} {'batch':>9} {'attention':>9} {'s/NFE':>8} {'peak GiB':>9}")
for r in rows:
    print(f"{r['width']:>6} {r['batch']:>9} {r['attention']:>9} {r['seconds_per_nfe']:>8.3f} {r['peak_device_mib']/1024:>9.2f}")
PY

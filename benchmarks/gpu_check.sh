#!/usr/bin/env bash
# One GPU check of every method at paper size (issue 16): train / test img/s fp32 vs the fast
# path (bf16-mixed, TF32, fused Adam, channels_last; COMPILE=1 adds torch.compile), MFU against
# the GPU's dense bf16 peak, DDAD test s/img at 256 px, projected paper-recipe minutes for MVTec
# bottle. Each method runs in its own process under PER_METHOD_S seconds (default 60), so the
# whole script stays under 8 minutes on one H100 / H200 (7 methods + start-up).
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from the repository root
#   DRY_RUN=1 bash benchmarks/gpu_check.sh       # CPU, smoke size: checks the script only
#   METHODS="ddad dmad" COMPILE=1 bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
METHODS="${METHODS:-ddad autoencoder cnn draem anogan dmad anoddpm}"
PER_METHOD_S="${PER_METHOD_S:-60}"
ARGS=()
[ "${COMPILE:-0}" = 1 ] && ARGS+=(--compile)
[ "${DRY_RUN:-0}" = 1 ] && ARGS+=(--dry-run)
[ -n "${PEAK_TFLOPS:-}" ] && ARGS+=(--peak-tflops "$PEAK_TFLOPS")
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
START=$(date +%s)
if [ "${DRY_RUN:-0}" != 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
fi
for m in $METHODS; do
  timeout --signal=INT "$PER_METHOD_S" "$PY" benchmarks/gpu_check.py --method "$m" "${ARGS[@]}" \
    > "$OUT/$m.log" 2>&1
  rc=$?
  grep -E "^$m " "$OUT/$m.log" || echo "$m: no result (exit $rc, log $OUT/$m.log; 124 = over ${PER_METHOD_S}s)"
done
echo "--- DDAD test seconds per image at 256 px (fp32 / fast):"
grep -h "^RESULT" "$OUT/ddad.log" 2>/dev/null | "$PY" -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line[len("RESULT "):])
    print(r["image_size"], "px:", {k: round(v["test_s_per_img"], 3) for k, v in r["variants"].items()})
'
echo "--- total $(( $(date +%s) - START )) s; logs in $OUT"

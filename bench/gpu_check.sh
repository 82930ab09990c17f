#!/usr/bin/env bash
# Train the bench CNN a few hundred iterations with `onnxsq train --device cuda`, then on the CPU,
# and print both throughputs.
#
# Assumptions (not checked beyond what the commands themselves check):
#   - run from anywhere inside the repository, on Linux x86-64 with an NVIDIA GPU, a driver for
#     CUDA 12 and network access to PyPI (or a pip configured with a mirror/wheelhouse);
#   - python3 >= 3.10 on PATH;
#   - onnxruntime-training 1.19.2 (the [train] extra) finds the CUDA 12 / cuDNN libraries: the torch
#     wheel pip pulls in ships them (nvidia-* packages), which is why torch is installed first.
# It creates (once) a venv at $VENV (default .venv-gpu) with `pip install -e '.[train,test]'`.
# Knobs: ITERS (default 300), BATCH (64), SIZE (64: input 3×SIZE×SIZE).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
ITERS=${ITERS:-300}
BATCH=${BATCH:-64}
SIZE=${SIZE:-64}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet torch
  "$VENV/bin/pip" install --quiet -e '.[train,test]'
fi
PY="$VENV/bin/python"
"$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
"$PY" -c "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else \
  'CUDAExecutionProvider missing: is the [train] (CUDA) extra installed, not [train-cpu]?')"

run() {  # $1 = device → JSON line from bench_train.py's worker mode
  "$PY" bench/bench_train.py --side onnxsq --device "$1" --iters "$ITERS" --batch "$BATCH" --size "$SIZE" | tail -n 1
}
CUDA_JSON=$(run cuda)
CPU_JSON=$(run cpu)
"$PY" - "$CUDA_JSON" "$CPU_JSON" <<PYEOF
import json, sys
cuda, cpu = (json.loads(a) for a in sys.argv[1:3])
print(f"onnxsq train, bench CNN, 3x${SIZE}x${SIZE}, batch ${BATCH}, ${ITERS} iterations")
print(f"| device | images/s | setup s | peak RSS MiB |")
print(f"|---|---:|---:|---:|")
for name, r in (("cuda", cuda), ("cpu", cpu)):
    print(f"| {r['device']} | {r['images_per_s']:.0f} | {r['setup_s']:.1f} | {r['peak_rss_mib']:.0f} |")
print(f"cuda / cpu throughput: {cuda['images_per_s'] / cpu['images_per_s']:.2f}x")
assert cuda["device"] == "cuda", "the cuda run fell back to the CPU"
PYEOF

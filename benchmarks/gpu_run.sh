#!/usr/bin/env bash
# Everything issue 11 measures on a GPU, in one command, on a machine with only torch
# (a CUDA build) installed: no Ray, no rayssl install. From the repository root:
#
#     bash benchmarks/gpu_run.sh OUT_DIR
#
# 1. benchmarks/train_throughput.py: C3D, R3D, R(2+1)D in fp32 / tf32 / bf16cl (the
#    anchor's settings) and rayssl's step with each speed setting (fused, conv2d,
#    aligned, best = compiled, best2x = compiled at twice the batch), clips/s, TFLOP/s,
#    fraction of the card's measured bf16 matmul rate, compile time, ratios to the H100
#    anchor and best / bf16cl against the 2x target;
# 2. benchmarks/loss_curves.py: short R(2+1)D pace-prediction runs in fp32, bf16 and
#    best from the same init and data, two seeds: do the speed settings train like fp32?
#
# Writes OUT_DIR/{train_throughput,loss_curves}.{json,txt} (and loss_curves.png when
# matplotlib is there). Sized for under 8 minutes on one H100/H200; the first part
# skips its compiled modes past 300 s so the second always runs. TT_ARGS and LC_ARGS
# append arguments to the two scripts (the test runs it on a CPU with tiny settings).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_run.sh OUT_DIR}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python}
# one inductor cache for both scripts: the curves' compiled R(2+1)D reuses the kernels
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/rayssl-inductor-cache}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    > "$out/gpu.txt" 2>&1 || true
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    | tee -a "$out/gpu.txt"
start=$SECONDS
"$python" "$here/train_throughput.py" --models c3d r3d r21d \
    --anchor "$here/h100-anchor.json" --budget-s 300 --json "$out/train_throughput.json" \
    ${TT_ARGS:-} 2>&1 | tee "$out/train_throughput.txt"
status=${PIPESTATUS[0]}
echo "train_throughput: exit $status after $((SECONDS - start)) s"
"$python" "$here/loss_curves.py" --json "$out/loss_curves.json" --plot "$out/loss_curves.png" \
    ${LC_ARGS:-} 2>&1 | tee "$out/loss_curves.txt"
curves=${PIPESTATUS[0]}
echo "loss_curves: exit $curves; total $((SECONDS - start)) s"
[ "$status" -eq 0 ] && [ "$curves" -eq 0 ]

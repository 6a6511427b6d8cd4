#!/usr/bin/env bash
# Every GPU check of issues 11 and 23 in one command, on a machine with only torch (a
# CUDA build) installed and 16 CPU cores: under 9 minutes on one H100/H200. From the
# repository root:
#
#     bash benchmarks/gpu_run.sh OUT_DIR
#
# 1. throughput  benchmarks/train_throughput.py: C3D, R3D, R(2+1)D in fp32 / tf32 /
#    bf16cl (the anchor's settings) and rayssl's step with each speed setting (fused,
#    conv2d, aligned, best = compiled, best2x = compiled at twice the batch), clips/s,
#    TFLOP/s, fraction of the card's measured bf16 matmul rate, compile time, ratios to
#    the H100 anchor and best / bf16cl against the 2x target;
# 2. curves      benchmarks/loss_curves.py: short R(2+1)D pace-prediction runs in fp32,
#    bf16 and best from the same init and data, two seeds: do the speed settings train
#    like fp32?
# 3. gputests    pytest -m gpu: the CUDA-only paths (tests/test_gpu_paths.py);
# 4. e2e         benchmarks/gpu_e2e.py: the job users run (corpus, local Ray head, `ray
#    job submit` of a 2-epoch pace run of R(2+1)D at 112 px in the fastest setting part 1
#    found, `rayssl evaluate` with the GPU model actors), and the side-by-side figures.
#
# Parts 3 and 4 need Ray, PyAV, MLflow...: where `import ray` fails they are unpacked
# from .whl/site.tar.xz (made here by `python benchmarks/gpu_wheels.py`; the device
# tool's `carry` brings .whl) into $GPU_SITE_DIR (default /tmp/rayssl-site).
#
# Each part runs under its own timeout (*_TIMEOUT, seconds) and keeps its figures when a
# later one fails; the exit status is non-zero when any part failed. OUT_DIR gets
# gpu.txt, train_throughput.{json,txt}, loss_curves.{json,txt}, e2e.{json,txt} and
# logs.tar.gz (the pytest log, the jobs' and Ray head's logs, loss_curves.png): 8 files,
# what the device tool brings back. GPU_RUN_PARTS picks parts (default all four); TT_ARGS,
# LC_ARGS, E2E_ARGS append arguments to the three scripts (the tests run it on a CPU with
# tiny settings: tests/test_gpu_run.py).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_run.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
python=${PYTHON:-python}
parts=${GPU_RUN_PARTS:-throughput curves gputests e2e}
logs="$out/logs"
mkdir -p "$logs"
# one archive of the logs, also when a part is cut short
trap 'tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$logs"' EXIT
# one inductor cache for all parts: the curves' and the job's compiled R(2+1)D reuse
# the benchmark's kernels
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/rayssl-inductor-cache}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    > "$out/gpu.txt" 2>&1 || true
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    | tee -a "$out/gpu.txt"
echo "cpus $(nproc)" >> "$out/gpu.txt"
start=$SECONDS
failed=""
has() { case " $parts " in *" $1 "*) return 0 ;; esac; return 1; }
result() {  # part name, exit status
    echo "$1: exit $2 after $((SECONDS - start)) s" | tee -a "$out/gpu.txt"
    [ "$2" -eq 0 ] || failed="$failed $1"
}

if has gputests || has e2e; then
    if ! "$python" -c "import ray" >/dev/null 2>&1; then
        archive=${GPU_SITE_ARCHIVE:-$root/.whl/site.tar.xz}
        site=${GPU_SITE_DIR:-/tmp/rayssl-site}
        if [ -f "$archive" ]; then
            mkdir -p "$site" && tar -xJf "$archive" -C "$site"
            export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
            echo "site: unpacked $archive into $site after $((SECONDS - start)) s"
        else
            echo "site: no Ray here and no $archive (python benchmarks/gpu_wheels.py makes it)"
        fi
    fi
    "$python" -c "import ray, av, mlflow, pydantic; print('ray', ray.__version__)" \
        2>&1 | tail -1 | tee -a "$out/gpu.txt"
fi

if has throughput; then
    timeout -k 10 "${TT_TIMEOUT:-140}" "$python" "$here/train_throughput.py" \
        --models c3d r3d r21d --anchor "$here/h100-anchor.json" --budget-s "${TT_BUDGET:-80}" \
        --json "$out/train_throughput.json" ${TT_ARGS:-} 2>&1 | tee "$out/train_throughput.txt"
    result train_throughput "${PIPESTATUS[0]}"
fi
if has curves; then
    # 80 steps (the script's default is 120): the 9 minutes of the whole command
    timeout -k 10 "${LC_TIMEOUT:-110}" "$python" "$here/loss_curves.py" --steps 80 \
        --json "$out/loss_curves.json" --plot "$logs/loss_curves.png" ${LC_ARGS:-} 2>&1 \
        | tee "$out/loss_curves.txt"
    result loss_curves "${PIPESTATUS[0]}"
fi
if has gputests; then
    # from the repository root: tests/ is a package there, and pytest reads pyproject.toml
    (cd "$root" && timeout -k 10 "${PT_TIMEOUT:-70}" "$python" -m pytest -m gpu \
        tests/test_gpu_paths.py -p no:cacheprovider -q -rA > "$logs/gpu_tests.txt" 2>&1)
    status=$?
    tail -3 "$logs/gpu_tests.txt" | tee -a "$out/gpu.txt"
    result gpu_tests "$status"
fi
if has e2e; then
    throughput=""
    [ -f "$out/train_throughput.json" ] && throughput="--throughput $out/train_throughput.json"
    timeout -k 20 "${E2E_TIMEOUT:-190}" "$python" "$here/gpu_e2e.py" --out "$out" \
        --logs "$logs" $throughput ${E2E_ARGS:-} 2>&1 | tee "$logs/e2e_stdout.txt"
    result e2e "${PIPESTATUS[0]}"
fi
echo "total $((SECONDS - start)) s; failed:${failed:- none}" | tee -a "$out/gpu.txt"
[ -z "$failed" ]

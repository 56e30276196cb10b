#!/usr/bin/env bash
# GPU readiness check (issue 19), one call on a machine lent an NVIDIA GPU, under 8 minutes:
#   1. the GPU (nvidia-smi -L) and a Python whose torch sees it;
#   2. pytest tests/test_cuda.py (the CUDA-marked tests: every method trains on CUDA in fp32 and bf16,
#      resume equals uninterrupted, a CUDA snapshot loads on the CPU, channels_last, pinned batches);
#   3. python -m benchmarks.bench_train --device cuda --quick (images/s and TFLOP/s per method against
#      the GPU's measured matmul/conv peaks, fp32 and bf16 side by side).
#
#     bash benchmarks/gpu_check.sh            # from the repository root
#
# Results go to $OUT if set (the device tool's folder), else benchmarks/results/: gpu_check.log,
# test_cuda.xml, train_throughput_cuda_quick.json. Exit status: 0 all passed; 3 no CUDA-capable
# torch / no GPU; 1 a test or the benchmark failed (both still run).
#
# Python: the environment is .venv, made the way the Makefile makes it (python3 -m venv .venv,
# pip install torch==2.13.0, pip install -e .). On Linux x86-64 PyPI's default index serves torch
# built with CUDA; the "+cpu" build (CPU-only index) cannot use the GPU. If .venv's torch sees no GPU
# but the GPU is there, the script reinstalls torch==2.13.0 from the default index (timeout 240 s);
# if .venv does not exist and the system python3 already holds a CUDA torch (an offline GPU image),
# .venv is made with --system-site-packages so it uses that torch and only calae is installed.
# Knobs: PYTHON (default python3), VENV (default .venv), TORCH (default torch==2.13.0),
# GPU_CHECK_INSTALL=0 (never pip-install anything), METHODS (the benchmark's method list).
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH=${TORCH:-torch==2.13.0}
INSTALL=${GPU_CHECK_INSTALL:-1}
METHODS=${METHODS:-vae,aae,alae,soft_intro_vae,calae,vae_gan}
RES=${OUT:-benchmarks/results}
mkdir -p "$RES"
LOG="$RES/gpu_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # calae importable even if `pip install -e .` fails
T0=$SECONDS

say() { echo "[gpu_check +$((SECONDS - T0))s] $*" | tee -a "$LOG"; }
run() { # run CMD... with its output in the log
    "$@" 2>&1 | tee -a "$LOG"
    return "${PIPESTATUS[0]}"
}
cuda_ok() { # does python $1's torch see a CUDA device?
    [ -x "$1" ] || command -v "$1" >/dev/null 2>&1 || return 1
    timeout 120 "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1
}
torch_info() {
    timeout 120 "$1" -c 'import torch; print("torch", torch.__version__, "| built for CUDA", torch.version.cuda,
"| cuda available", torch.cuda.is_available(), "| devices", torch.cuda.device_count())' 2>/dev/null \
        || echo "no torch importable by $1"
}

say "date $(date -u +%FT%TZ), host $(uname -srm), repo $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
GPU=0
if command -v nvidia-smi >/dev/null 2>&1; then
    if run timeout 30 nvidia-smi -L; then GPU=1; fi
    run timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
else
    say "nvidia-smi: not found (no NVIDIA driver on this machine)"
fi

# ---- a Python whose torch sees the GPU --------------------------------------------------------------
VPY="$VENV/bin/python"
PY=""
if [ -x "$VPY" ]; then
    say "$VENV exists: $(torch_info "$VPY")"
    if cuda_ok "$VPY"; then
        PY=$VPY
    elif [ "$GPU" = 1 ] && [ "$INSTALL" = 1 ]; then
        say "$VENV's torch sees no GPU: reinstalling $TORCH from the default index (timeout 240 s)"
        run timeout 240 "$VPY" -m pip install -q --force-reinstall --no-cache-dir --index-url https://pypi.org/simple "$TORCH" \
            || say "pip install $TORCH failed or timed out (no network?)"
        cuda_ok "$VPY" && PY=$VPY
    fi
elif [ "$INSTALL" = 1 ]; then
    if cuda_ok "$PYTHON"; then
        say "no $VENV; $PYTHON's torch sees the GPU ($(torch_info "$PYTHON")): making $VENV with --system-site-packages"
        run timeout 120 "$PYTHON" -m venv --system-site-packages "$VENV" \
            && run timeout 180 "$VPY" -m pip install -q --no-deps --no-build-isolation -e . \
            || say "installing calae into $VENV failed; using PYTHONPATH=src"
    else
        say "no $VENV: making it as the Makefile does ($PYTHON -m venv $VENV; pip install $TORCH; pip install -e .)"
        run timeout 120 "$PYTHON" -m venv "$VENV" \
            && run timeout 300 "$VPY" -m pip install -q "$TORCH" \
            && run timeout 180 "$VPY" -m pip install -q -e '.[test]' \
            || say "making $VENV failed or timed out (no network?)"
    fi
    cuda_ok "$VPY" && PY=$VPY
fi
if [ -z "$PY" ] && [ "$VPY" != "$PYTHON" ] && cuda_ok "$PYTHON"; then
    PY=$PYTHON  # e.g. an offline GPU image whose python3 holds a CUDA torch
fi
if [ -z "$PY" ]; then
    say "NO CUDA: no Python here has a torch that sees a CUDA device."
    say "  $VENV: $( [ -x "$VPY" ] && torch_info "$VPY" || echo 'absent')"
    say "  $PYTHON: $(torch_info "$PYTHON")"
    if [ "$GPU" = 1 ]; then
        say "  the GPU is visible (nvidia-smi), so torch is the problem: install a CUDA build of torch, e.g."
        say "  '$VENV/bin/pip install --force-reinstall $TORCH' from PyPI's default index (Linux x86-64 wheels"
        say "  there are built with CUDA; a '+cpu' version from download.pytorch.org/whl/cpu is not)."
    else
        say "  no NVIDIA GPU is visible (nvidia-smi -L failed or is missing): run this on a machine with one."
    fi
    say "exit 3 (nothing was tested or measured)"
    exit 3
fi
say "python: $PY"
run timeout 120 "$PY" -c 'import torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version())
print("device", torch.cuda.get_device_name(), "| capability", torch.cuda.get_device_capability(),
      "| bf16", torch.cuda.is_bf16_supported(), "| memory %.1f GiB" % (torch.cuda.get_device_properties(0).total_memory / 2**30))'

# ---- the CUDA-marked tests ------------------------------------------------------------------------------
STATUS=0
say "pytest tests/test_cuda.py (timeout 200 s)"
run timeout 200 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py --junitxml "$RES/test_cuda.xml"
rc=$?
if [ $rc != 0 ]; then
    STATUS=1; say "tests: FAILED (rc $rc; 124 = timed out)"
elif grep -q 'skipped="[1-9]' "$RES/test_cuda.xml" 2>/dev/null; then
    STATUS=1; say "tests: some were SKIPPED although torch sees a CUDA device"
else
    say "tests: all passed"
fi

# ---- the throughput table -------------------------------------------------------------------------------
say "bench_train --device cuda --quick --methods $METHODS (timeout 270 s)"
run timeout 270 "$PY" -m benchmarks.bench_train --device cuda --quick --methods "$METHODS" \
    --out "$RES/train_throughput_cuda_quick.json"
rc=$?
if [ $rc != 0 ]; then STATUS=1; say "benchmark: FAILED (rc $rc; 124 = timed out)"; else say "benchmark: done, $RES/train_throughput_cuda_quick.json"; fi
say "finished in $((SECONDS - T0)) s, exit $STATUS"
exit $STATUS

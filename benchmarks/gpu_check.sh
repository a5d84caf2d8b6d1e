#!/usr/bin/env bash
# The GPU checked in one prepared run:
#
#     bash benchmarks/gpu_check.sh OUTDIR
#
# On a machine with a CUDA device, CuPy, Numba, PyTorch, torchvision, timm, pytest and Hypothesis
# (and no package index), from a plain copy of the repository (not installed), in at most
# GPU_CHECK_BUDGET seconds (default 480): each step below runs under `timeout` with its own cap,
# cut to what is left of the budget; a failed step does not stop the next one. Everything goes to
# OUTDIR: check.log (all output), one log per step, pytest's JUnit XML, the benchmark's JSON, and
# summary.txt (which steps passed, failed, timed out or were skipped for want of a GPU). Exit
# status 0 when every step passed, or, on a machine without a GPU, was skipped.
#
#   1 environment    versions of Python, CuPy, Numba, torch, torchvision, timm; nvidia-smi
#   2 setup          make `import tinycnn` reach this checkout without the network: an editable
#                    install with no index, no dependencies and no build isolation where setuptools
#                    can build a wheel, else (or if that fails) a shadow package tree in a
#                    temporary directory whose tinycnn/ links to tinycnn/*, models/ and kernels/,
#                    put first on PYTHONPATH (GPU_CHECK_SETUP=install|shadow forces one way)
#   3 kernels        tests/test_kernel_backends.py and tests/test_cuda_kernels.py: CuPy against the
#                    float64 reference (and the reference against PyTorch, gpu.py's CUDA bodies as
#                    C++), the LeNet/ResNet-18 GPU-against-CPU runs, the GPU gradchecks of the ops
#                    (the Numba parametrisation is left to CI: its cold compile costs a minute here)
#   4 torchvision    tests/test_models_torchvision.py -m gpu: the zoo's eval logits on CuPy against
#                    torchvision's and timm's networks
#   5 op-gradchecks  every other test marked gpu: the op tests' `xp` fixture on CuPy (gradchecks,
#                    PyTorch comparisons) and the device tests
#   6 distributed    tests/test_distributed.py -m gpu (needs mpi4py and mpiexec, the extra
#                    distributed): tinycnn.distributed over NCCL with a world of one, and 2
#                    processes x batch 32 with CuPy arrays over MPI against 1 process x batch 64
#   7 benchmark      python -m benchmarks.run --only gpu: LeNet and ResNet-50 training, tinycnn on
#                    CuPy against PyTorch on CUDA
#
# Without a GPU the pytest steps report their tests as skipped and the benchmark prints "skipped:
# no GPU", so the script can be tried anywhere (GPU_CHECK_BUDGET=120 keeps such a try short).
set -u

if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR" >&2
    exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
BUDGET=${GPU_CHECK_BUDGET:-480}
SETUP_MODE=${GPU_CHECK_SETUP:-auto}
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tinycnn-gpu-check.XXXXXX")
RUN_DIR="$WORK/run"  # the working directory of every step: nothing importable in it
mkdir -p "$RUN_DIR"
LOG="$OUT/check.log"
SUMMARY="$OUT/summary.txt"
: > "$LOG"
: > "$SUMMARY"
# Caches written by the run go to the work directory, not into the checkout.
export NUMBA_CACHE_DIR="$WORK/numba-cache"
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
export PYTHONDONTWRITEBYTECODE=1
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
STATUS=0
STEP=0
GPU_PRESENT=unknown

log() { echo "$*" | tee -a "$LOG"; }

remaining() { echo $((BUDGET - SECONDS)); }

# run_step NAME CAP COMMAND...: run COMMAND in RUN_DIR under `timeout` (CAP seconds, or what is
# left of the budget), its output to OUTDIR/NN-NAME.log and check.log; record the outcome.
run_step() {
    local name=$1 cap=$2
    shift 2
    STEP=$((STEP + 1))
    local step_log
    step_log="$OUT/$(printf '%02d' "$STEP")-$name.log"
    local left
    left=$(remaining)
    if [ "$left" -lt 10 ]; then
        log "== $name: not run, the budget of ${BUDGET}s is spent"
        printf '%-14s %-9s %5ss  %s\n' "$name" "NOT RUN" 0 "budget spent" >> "$SUMMARY"
        STATUS=1
        return
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    log "== $name (at most ${cap}s): $*"
    local start=$SECONDS rc
    (cd "$RUN_DIR" && timeout --kill-after=10 "$cap" "$@") > "$step_log" 2>&1
    rc=$?
    cat "$step_log" >> "$LOG"
    local took=$((SECONDS - start)) outcome note
    # pytest's last line ("12 passed, 3 skipped in 4.2s") says what ran.
    note=$(grep -E '^=* ?[0-9]+ (passed|failed|skipped|error|errors|deselected|xfailed)|no tests ran' "$step_log" \
        | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
    case $rc in
        0) outcome=passed ;;
        5) outcome=skipped; note="${note:-no tests selected}" ;;  # pytest: nothing to run here
        124|137) outcome=TIMEOUT; note="killed after ${cap}s; ${note}"; STATUS=1 ;;
        *) outcome=FAILED; note="exit status $rc; ${note}"; STATUS=1 ;;
    esac
    if [ "$name" = benchmark ] && grep -q "skipped: no GPU" "$step_log"; then
        outcome=skipped; note="skipped: no GPU"
    elif [ "$outcome" = passed ] && [[ "$note" == *skipped* ]] && [[ "$note" != *passed* ]]; then
        outcome=skipped  # every test of the step skipped (no GPU)
    fi
    if [ "$outcome" = skipped ] && [ "$GPU_PRESENT" = True ]; then
        STATUS=1  # a GPU is there, so nothing should have been skipped
    fi
    log "== $name: $outcome in ${took}s ${note:+($note)}"
    printf '%-14s %-9s %5ss  %s\n' "$name" "$outcome" "$took" "$note" >> "$SUMMARY"
}

environment() {
    "$PYTHON" - <<'EOF'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.platform())
for name in ("numpy", "numba", "cupy", "torch", "torchvision", "timm", "pytest", "hypothesis", "setuptools"):
    try:
        module = importlib.import_module(name)
        print(f"{name:12s}", getattr(module, "__version__", "?"))
    except Exception as error:  # torchvision's __init__ may fail without its C ops: the tests bypass it
        print(f"{name:12s}", f"not importable: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
try:
    import cupy
    print("cupy devices", cupy.cuda.runtime.getDeviceCount(), "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion())
except Exception as error:
    print("cupy devices: none:", type(error).__name__, error)
try:
    import torch
    print("torch.cuda", torch.cuda.is_available(), torch.version.cuda,
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as error:
    print("torch.cuda: unknown:", error)
EOF
    if command -v nvidia-smi > /dev/null; then
        timeout 30 nvidia-smi
    else
        echo "nvidia-smi: not found"
    fi
    command -v "${CXX:-g++}" > /dev/null && "${CXX:-g++}" --version | head -n 1 || echo "no C++ compiler: test_cuda_kernels is skipped"
    return 0
}

# Does `import tinycnn` from RUN_DIR reach this checkout, with its kernels and models?
imports_this_checkout() {
    (cd "$RUN_DIR" && "$PYTHON" - "$REPO" <<'EOF'
import os, sys
import tinycnn, tinycnn.kernels, tinycnn.models
repo = os.path.realpath(sys.argv[1])
for module in (tinycnn, tinycnn.kernels, tinycnn.models):
    path = os.path.realpath(module.__file__)
    print(module.__name__, "->", path)
    if not path.startswith(repo + os.sep):
        sys.exit(f"{module.__name__} comes from {path}, not from {repo}")
EOF
    )
}

shadow_tree() {
    local shadow="$WORK/shadow"
    mkdir -p "$shadow/tinycnn"
    local entry
    for entry in "$REPO"/tinycnn/*; do
        ln -s "$entry" "$shadow/tinycnn/$(basename "$entry")"
    done
    ln -s "$REPO/models" "$shadow/tinycnn/models"
    ln -s "$REPO/kernels" "$shadow/tinycnn/kernels"
    ln -s "$REPO/benchmarks" "$shadow/benchmarks"
    export PYTHONPATH="$shadow${PYTHONPATH:+:$PYTHONPATH}"
    echo "shadow package tree $shadow first on PYTHONPATH"
}

setup() {
    # An editable wheel needs setuptools with bdist_wheel: its own (70.1 on) or the wheel package's.
    if [ "$SETUP_MODE" != shadow ] && "$PYTHON" -c "
import sys, setuptools
from importlib.util import find_spec
sys.exit(not (find_spec('setuptools.command.bdist_wheel') or find_spec('wheel')))" 2> /dev/null; then
        echo "setuptools present: editable install, no index, no dependencies, no build isolation"
        if (cd "$REPO" && timeout 120 "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation -e .) \
                && imports_this_checkout; then
            return 0
        fi
        echo "the editable install did not give this checkout"
        [ "$SETUP_MODE" = install ] && return 1
    fi
    shadow_tree
    imports_this_checkout
}

log "tinycnn GPU check of $REPO, $(date -u '+%Y-%m-%d %H:%M UTC'), budget ${BUDGET}s, logs in $OUT"
export -f environment
export PYTHON
run_step environment 60 bash -c environment
# setup changes PYTHONPATH, so it runs in this shell, timed by hand.
STEP=$((STEP + 1))
log "== setup ($SETUP_MODE)"
setup_start=$SECONDS
if setup > "$OUT/02-setup.log" 2>&1; then setup_outcome=passed; else setup_outcome=FAILED; STATUS=1; fi
cat "$OUT/02-setup.log" >> "$LOG"
log "== setup: $setup_outcome in $((SECONDS - setup_start))s"
printf '%-14s %-9s %5ss  %s\n' setup "$setup_outcome" "$((SECONDS - setup_start))" \
    "$(grep -m1 -E '^(shadow|setuptools|the editable)' "$OUT/02-setup.log")" >> "$SUMMARY"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$REPO"  # the repository root too, for `benchmarks`
GPU_PRESENT=$(cd "$RUN_DIR" && timeout 60 "$PYTHON" -c "from tinycnn import backend; print(backend.gpu_available())" \
    2>> "$LOG")
log "CuPy sees a CUDA device: ${GPU_PRESENT:-unknown}$([ "$GPU_PRESENT" = True ] || echo ' (the GPU steps will report skips)')"

PYTEST=("$PYTHON" -m pytest -c "$REPO/setup.cfg" --rootdir "$REPO" -p no:cacheprovider -q -rfEs)
run_step kernels 150 "${PYTEST[@]}" --junitxml="$OUT/kernels.xml" -k "not numba" \
    "$REPO/tests/test_kernel_backends.py" "$REPO/tests/test_cuda_kernels.py"
run_step torchvision 150 "${PYTEST[@]}" --junitxml="$OUT/torchvision.xml" -m gpu \
    "$REPO/tests/test_models_torchvision.py"
run_step op-gradchecks 60 "${PYTEST[@]}" --junitxml="$OUT/op-gradchecks.xml" -m gpu "$REPO/tests" \
    --ignore="$REPO/tests/test_kernel_backends.py" --ignore="$REPO/tests/test_cuda_kernels.py" \
    --ignore="$REPO/tests/test_models_torchvision.py" --ignore="$REPO/tests/test_distributed.py"
run_step distributed 60 "${PYTEST[@]}" --junitxml="$OUT/distributed.xml" -m gpu "$REPO/tests/test_distributed.py"
run_step benchmark 100 "$PYTHON" -m benchmarks.run --only gpu --steps 3 --repeat 3 --json "$OUT/benchmark-gpu.json"

log ""
log "summary (${SECONDS}s of ${BUDGET}s):"
tee -a "$LOG" < "$SUMMARY"
rm -rf "$WORK"
exit $STATUS

#!/usr/bin/env bash
# Every GPU check of the project in one run: each issue's GPU bench, then the CUDA-only tests, then extras.
#
# Why one script: GPU time is scarce (a lent machine, minutes per session), so the checks are prepared and run
# together, each under its own time limit, and one failing check does not stop the others. The log names the card,
# the software versions and the git revision, so its figures can go straight into bench/RESULTS.md.
#
#   bash bench/gpu_checks.sh [LOG_DIR]      # default: $OUT if set (a lent device machine), else reports/gpu
#   PARTS="benches tests" bash bench/gpu_checks.sh   # only some parts, in this order
#
# Parts, in the order of what the issues need most (each check under its own time limit; not yet timed on a GPU):
#   benches  each issue's headline GPU bench (DALI, tracking, training fp32 and bf16)      limits 330 s
#   tests    the CUDA-only tests (CI has no GPU, so they never run there)                  limits 270 s
#   extras   batched OTB evaluation, fp32 tracking                                          limits 120 s
# One part per `run` call keeps each call well inside its 10 minutes, and a call cut short still leaves the parts
# before it. Runs in the repository root with whatever python has torch (CUDA) and nvidia-dali-cuda130
# (PYTHON=..., default python3, or .venv/bin/python when it exists); a lent machine lacks some pure-Python
# packages: `bash bench/gpu_wheels.sh install DIR` first (see that script).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
LOG_DIR=${1:-${OUT:-reports/gpu}}
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/gpu_checks.log"
export PYTHONUNBUFFERED=1
: > "$LOG"
failed=()
t_start=$(date +%s)

say() { echo "$*" | tee -a "$LOG"; }

# check NAME SECONDS CMD...: run one check under `timeout`, log it, remember a failure. A CUDA test that pytest
# skipped counts as failed: on this machine nothing may skip for want of CUDA.
check() {
    local name=$1 limit=$2
    shift 2
    say ""
    say "== $name  ($(date -u +%H:%M:%S) UTC, limit ${limit}s): $*"
    local t0 out
    t0=$(date +%s)
    out=$(mktemp)
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$out" | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ] && [[ $name == "CUDA test"* ]] && grep -qE "[0-9]+ skipped" "$out"; then
        say "-- $name: pytest skipped it although this machine has CUDA"
        rc=3
    fi
    rm -f "$out"
    say "-- $name: exit $rc in $(( $(date +%s) - t0 ))s"
    [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
}

# GIT_REV: for copies of the tree without .git (a lent device machine gets the working tree only).
say "gpu_checks $(date -u +%Y-%m-%dT%H:%M:%SZ); git $(git rev-parse --short HEAD 2>/dev/null || echo "${GIT_REV:-?}")"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$LOG"
"$PY" -c "import torch, nvidia.dali as d; print('python', __import__('sys').version.split()[0], 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'dali', d.__version__)" 2>&1 | tee -a "$LOG"

# Missing packages only fail the checks that need them (each check runs on its own), so warn and go on.
"$PY" -c "
import importlib.util as u
gone = [m for m in ('google.protobuf', 'lxml', 'PIL', 'pytest', 'tensorboard', 'tqdm', 'cv2') if u.find_spec(m) is None]
print('missing python packages: ' + ', '.join(gone) if gone else 'python packages: all present')
" 2>&1 | tee -a "$LOG"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "no CUDA device visible to $PY (or no torch: see above): nothing to check (the CUDA tests would only skip)"
    exit 2
fi

T=("$PY" -m pytest -q -p no:cacheprovider -rA)
for part in ${PARTS:-benches tests extras}; do
    case $part in
    benches)
        # Each prints a table and a RESULT line; ratios are measured within the same process.
        check "augment: DALI GPU backend (goal >= 25,000 examples/s)" 120 \
            "$PY" bench/augment.py --device gpu --skip-baseline --repeats 2
        check "track: single stream fp16 + CUDA graph (goal >= 1,500 frames/s)" 60 "$PY" bench/track.py --device cuda
        check "train: fp32, batch 50 (goal >= 95% of the bare step)" 75 "$PY" bench/train.py --device cuda
        check "train: bf16, batch 256 (goal >= 90% of the bare step)" 75 "$PY" bench/train.py --device cuda \
            --amp bf16 --batch-examples 256 --loader-pairs 64 --window 10 --windows 10
        ;;
    tests)
        # Tests that only run with CUDA; one pytest per test, so a module that cannot be imported there costs only
        # its own test, and a slow disk costs one training configuration, not three.
        check "CUDA test: DALI GPU graph = CPU graph" 40 "${T[@]}" tests/test_augment.py::test_gpu_graph_matches_cpu_graph
        check "CUDA test: tracker CUDA graph = eager" 30 "${T[@]}" tests/test_tracker.py::test_cuda_graph_path_equals_eager
        check "CUDA test: fp16 LRN" 20 "${T[@]}" \
            tests/test_net_parity.py::test_half_precision_lrn_does_not_overflow_on_cuda
        for cfg in gpu-none gpu-bf16 cpu-none; do
            check "CUDA test: training + resume, loader-amp $cfg" 60 "${T[@]}" \
                "tests/test_train.py::test_cuda_training_resumes_the_same_loss_curve[$cfg]"
        done
        ;;
    extras)
        # The batch-1 baseline's per-frame rate does not depend on how many sequences it runs: 32 keep it ~10 s;
        # fp32 tracking times 1000 frames per run to fit its limit.
        check "eval batched: fp16, channels-last, 256 sequences" 80 \
            "$PY" bench/eval_batched.py --device cuda --dtype float16 --channels-last --sequences 256 \
            --one-by-one-sequences 32
        check "track: fp32" 40 "$PY" bench/track.py --device cuda --dtype fp32 --frames 1000
        ;;
    *)
        say "unknown part '$part' (parts: benches tests extras)"
        failed+=("part $part")
        ;;
    esac
done

say ""
say "== summary ($(( $(date +%s) - t_start ))s in all)"
grep -E "^-- |^RESULT |^device |^[0-9]+ (passed|failed|skipped|errors?)|(passed|failed|skipped|errors?).* in [0-9.]+s" "$LOG" \
    | grep -v "^== " > "$LOG.summary"
tee -a "$LOG" < "$LOG.summary"
rm -f "$LOG.summary"
if [ ${#failed[@]} -gt 0 ]; then
    say "FAILED: ${failed[*]}"
    exit 1
fi
say "all checks passed"

#!/usr/bin/env bash
# `make gpu-check`: the GPU tests, the kernel self-check and the benchmark, on a lent GPU.
#
# Phases (GPU_CHECK_PHASES, default all, in this order), each with a time limit so the whole
# check fits in 25 minutes on one H100 (24.5 min of limits) and each phase alone in 10 minutes:
#   tests      pytest -m gpu: the kernel comparisons at real layer sizes        (5.5 min)
#   selfcheck  foveal selfcheck in fp16, bf16 and fp32                          (2 min)
#   forward    device ceilings, then every full workload forward, fp16 + bf16   (5.5 min)
#   backward   device ceilings, then every full workload backward, fp16 + bf16  (4.5 min)
#   compile    torch.compile (max-autotune kernels) on a few representative layers (3 min)
#   models     whole networks (resnet50, mobilenet_v2, r3d_18; fp16): optimize()d foveal
#              against PyTorch eager and torch.compile, end to end               (4 min)
# A benchmark phase stops starting new cases shortly before its limit and reports the rest as
# skipped; interrupted by its limit, it still writes what it measured. Output goes to $OUT when
# set, else bench/out/ (at most 8 files, no sub-folders): gpu_check.log (every phase's output),
# one JSON and one plot per layer benchmark phase, and the models phase's JSON.
# Result JSON from a GPU is also copied into bench/results/ as DATE_DEVICE_LABEL.json; commit
# it and run `python -m foveal.bench.results_page` to update bench/README.md.
# The commit measured is recorded from git, or from FOVEAL_GIT_COMMIT where the tree was
# copied without git metadata.
# Exit status: 0 when every phase passed, 1 otherwise (every phase runs regardless).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT:-bench/out}"
ALL_PHASES="tests selfcheck forward backward compile models"
PHASES="${GPU_CHECK_PHASES:-$ALL_PHASES}"
LOG="$OUT_DIR/gpu_check.log"
BENCH_SUITE="${BENCH_SUITE:-full}"  # "smoke" to try the script on a machine without a GPU
COMPILE_WORKLOADS="${COMPILE_WORKLOADS:-resnet50.layer1.0.conv2 resnet50.layer3.1.conv3 resnext50.layer2.1.conv2}"
mkdir -p "$OUT_DIR" bench/results
: > "$LOG"

# Commit of the code under test: the device machine's copy of the tree may lack git metadata.
FOVEAL_GIT_COMMIT="${FOVEAL_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || true)}"
export FOVEAL_GIT_COMMIT
unset TRITON_INTERPRET  # compiled kernels only: interpreted timings mean nothing

DATE="$(date -u +%Y-%m-%d)"
DEVICE="$("$PYTHON" -c 'import re, torch
print(re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-")
      if torch.cuda.is_available() else "cpu")')"
[ "$DEVICE" = "cpu" ] && echo "gpu_check: no CUDA GPU found: timings will not be meaningful" | tee -a "$LOG"

declare -a SUMMARY=()
FAILED=0

# run_phase NAME TIME_LIMIT_SECONDS COMMAND...: log everything, keep going on failure.
run_phase() {
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout --signal=INT --kill-after=30 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    local took=$((SECONDS - start))
    local verdict="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict="TIMED OUT"; elif [ "$rc" -ne 0 ]; then verdict="FAILED (exit $rc)"; fi
    [ "$verdict" = "ok" ] || FAILED=1
    SUMMARY+=("$(printf '%-10s %-18s %5ss' "$name" "$verdict" "$took")")
    echo "=== $name: $verdict after ${took}s" | tee -a "$LOG"
}

# keep_result JSON LABEL: copy a GPU result into bench/results/ under a dated name.
keep_result() {
    local json="$1" label="$2"
    [ -f "$json" ] || return 0
    if "$PYTHON" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["meaningful"] else 1)' "$json"; then
        cp "$json" "bench/results/${DATE}_${DEVICE}_${label}.json"
        echo "kept bench/results/${DATE}_${DEVICE}_${label}.json" | tee -a "$LOG"
    fi
}

# bench_phase LABEL LIMIT_SECONDS BUDGET_MINUTES ARGS...: one `foveal bench` run, kept.
bench_phase() {
    local label="$1" limit="$2" budget="$3"
    shift 3
    local json="$OUT_DIR/${label}-${DATE}-${DEVICE}.json"
    run_phase "$label" "$limit" "$PYTHON" -m foveal.clients.cli bench --label "$label" \
        --max-minutes "$budget" --plain --json "$json" \
        --plot "$OUT_DIR/${label}-${DATE}-${DEVICE}.png" "$@"
    keep_result "$json" "$label"
}

for phase in $PHASES; do
    case "$phase" in
        tests)
            run_phase tests 330 "$PYTHON" -m pytest -m gpu -q -rA -p no:cacheprovider ;;
        selfcheck)
            run_phase selfcheck 120 "$PYTHON" -m foveal.clients.cli selfcheck ;;
        forward)
            bench_phase forward 330 4 --suite "$BENCH_SUITE" ;;
        backward)
            bench_phase backward 270 3 --suite "$BENCH_SUITE" --backward --no-forward ;;
        compile)
            # shellcheck disable=SC2086  # the workload list is meant to split into names
            bench_phase compile 180 1.5 --compile --workloads $COMPILE_WORKLOADS \
                --dtype float16 ;;
        models)
            # JSON only, no plot: $OUT returns at most 8 files. A network takes minutes (the
            # autotuners of foveal and torch.compile), so no new one starts after 2 minutes.
            models_json="$OUT_DIR/models-${DATE}-${DEVICE}.json"
            run_phase models 240 "$PYTHON" -m foveal.clients.cli bench-models --label models \
                --suite "$BENCH_SUITE" --max-minutes 2 --plain --json "$models_json"
            keep_result "$models_json" models ;;
        *)
            echo "gpu_check: unknown phase '$phase' (known: $ALL_PHASES)" | tee -a "$LOG"
            FAILED=1 ;;
    esac
done

{
    echo
    echo "gpu_check summary (${DEVICE}, ${DATE}, commit ${FOVEAL_GIT_COMMIT:-unknown}):"
    for line in "${SUMMARY[@]}"; do echo "  $line"; done
    echo "  output: $OUT_DIR"
} | tee -a "$LOG"
exit "$FAILED"

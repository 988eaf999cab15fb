#!/usr/bin/env bash
# progan_fast GPU check: build, GPU tests, quick benchmarks, results table -- in one bounded run.
#
#   OUT=/path/for/results bash bench/gpu_check.sh          (from the repository root)
#
# Stages, in the order a run cut short should keep them: versions -> pip install -e . (CUDA
# extension) -> the GPU-only tests (pytest -m gpu, without compile/autotune) -> kernel tests on the
# GPU (test_cuda_ext, test_triton_ops, test_triton_conv) -> bench unit tests -> bench data + train
# step (impl='auto' on the committed table) -> ops -> layers -> host cost per call (quick mode, one
# pytest-benchmark JSON each) -> trainer smoke run with --cuda-graph -> step profile -> the
# compile/autotune GPU tests -> eager trainer smoke run -> bench/report.py
# (results.json, results.md, compare against bench/results/, the README speed table) -> the
# table, last. Each stage has its own timeout, capped by what is left of CHECK_BUDGET_S (default 500 s:
# the first H100 run, 2026-11-26, needed 470 s and still cut four stages short); a stage that runs out
# gets SIGINT first (pytest then still writes its JSON), SIGKILL 10 s later. Nothing aborts the script
# before the report is written.
# Without a GPU the GPU-only stages are skipped and the bench runs its tiny CPU profile.
#
# $OUT receives 8 files (the device tool returns at most 8): check.log (every stage's full output),
# bench_ops.json, bench_host.json, bench_layers.json, bench_step.json (pytest-benchmark),
# profile_step.md (bench/profile_step.py), results.json, results.md. Scratch (the profile's JSON) goes
# to $SCRATCH (default /tmp/progan_gpu_check_scratch). The report prints the impl='auto' table the
# run implies; derive it again from the saved results file to commit it.
# Knobs: PYTHON (default python3), CHECK_BUDGET_S, CHECK_STAGES (comma-separated stage names: run only
# those, e.g. a follow-up of what a cut run skipped; versions, install and backends are stages too),
# BENCH_OPS_K / BENCH_LAYERS_K / BENCH_STEP_K (a pytest -k expression for that bench stage), PROGAN_GIT_COMMIT (recorded instead of git's HEAD: pass it where the checkout's .git lags its files), PROGAN_CHECK_SKIP_INSTALL=1, PROGAN_BENCH_* (see
# bench/conftest.py), CUDA_HOME (default /usr/local/cuda), MAX_JOBS (default: all cores), per-stage
# timeouts T_INSTALL=130 T_GPU_TESTS=60 T_BENCH_UNIT=20 T_BENCH_OPS=85 T_BENCH_HOST=30
# T_BENCH_LAYERS=60 T_BENCH_STEP=140 T_TRAIN_SMOKE_GRAPH=40 T_PROFILE_STEP=45 T_CUDA_TESTS=40 T_TRITON_TESTS=100
# T_TRITON_CONV_TESTS=40 T_GPU_TESTS_SLOW=60 T_TRAIN_SMOKE=40 (seconds; capped by the budget left).
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
OUT=${OUT:-/tmp/progan_gpu_check}
SCRATCH=${SCRATCH:-/tmp/progan_gpu_check_scratch}
mkdir -p "$OUT" "$SCRATCH"
rm -f "$OUT"/bench_*.json "$OUT"/results.json "$OUT"/results.md "$OUT"/profile_step.md  # a rerun never reports old files
PY=${PYTHON:-python3}
LOG="$OUT/check.log"
T0=$(date +%s)
BUDGET=${CHECK_BUDGET_S:-500}
RESERVE=25            # seconds kept for the report at the end
STATUS=()
: > "$LOG"
unset TRITON_INTERPRET   # real kernels on the GPU, never the interpreter
export PYTHONDONTWRITEBYTECODE=1

say() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

# stage NAME SECONDS CMD... : run CMD under its own timeout (capped by the budget left), log all
# output, echo its last lines, record the outcome; always returns 0.
stage() {
  local name=$1 want=$2; shift 2
  if [[ -n ${CHECK_STAGES:-} && " ${CHECK_STAGES//,/ } " != *" $name "* ]]; then
    say "SKIP $name: not in CHECK_STAGES"; STATUS+=("$name: not selected"); return 0
  fi
  local left=$(( T0 + BUDGET - RESERVE - $(date +%s) ))
  local t=$(( want < left ? want : left ))
  if (( t < 10 )); then
    say "SKIP $name: the time budget is spent"; STATUS+=("$name: skipped (time)"); return 0
  fi
  say "BEGIN $name (timeout ${t}s): $(echo "$*" | tr '\n' ' ' | cut -c1-150)"
  local tmp start rc status
  tmp=$(mktemp) start=$(date +%s)
  timeout -s INT -k 10 "$t" "$@" > "$tmp" 2>&1
  rc=$?
  cat "$tmp" >> "$LOG"
  tail -n "${TAIL_LINES:-4}" "$tmp" | sed 's/^/    | /'
  rm -f "$tmp"
  case $rc in
    0) status=ok ;;
    124|137) status="TIMEOUT after ${t}s" ;;
    *) status="FAILED rc=$rc" ;;
  esac
  say "END $name: $status ($(( $(date +%s) - start ))s)"
  STATUS+=("$name: $status")
  return 0
}

# ---------------------------------------------------------------------------------- versions
export PROGAN_GIT_COMMIT=${PROGAN_GIT_COMMIT:-$(git rev-parse --verify -q HEAD 2>/dev/null || true)}
TAIL_LINES=25 stage versions 30 bash -c "
  $PY - <<'EOF'
import os, platform, torch
print('python', platform.python_version(), '| torch', torch.__version__, '| CUDA', torch.version.cuda,
      '| cuDNN', torch.backends.cudnn.version())
try:
    import triton; print('triton', triton.__version__)
except Exception as exc: print('triton unavailable:', exc)
import numpy; print('numpy', numpy.__version__)
print('cuda available:', torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('device:', p.name, f'sm_{p.major}{p.minor}', round(p.total_memory / 2**30, 1), 'GiB,', torch.cuda.device_count(), 'visible')
print('CUDA_HOME:', os.environ.get('CUDA_HOME'), '| cores:', os.cpu_count())
EOF
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.max.sm --format=csv
  command -v nvcc >/dev/null && nvcc --version | tail -n 2 || ls /usr/local/cuda/bin/nvcc 2>/dev/null || echo 'nvcc: not found'
  $PY -m pip list 2>/dev/null | grep -iE '^(torch|triton|numpy|ninja|pybind11|pytest|pytest-benchmark|progan.fast) ' || true
  git log -1 --format='commit %H %s' 2>/dev/null || true"

HAS_GPU=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
say "GPU available: $HAS_GPU"

# ---------------------------------------------------------------------------------- build
if [[ $HAS_GPU == 1 && ${PROGAN_CHECK_SKIP_INSTALL:-0} != 1 ]]; then
  stage install "${T_INSTALL:-130}" env CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PY" -m pip install --no-build-isolation --no-deps -e .
else
  say "SKIP install: no GPU here or PROGAN_CHECK_SKIP_INSTALL=1 (never re-point a shared CPU venv)"
  STATUS+=("install: skipped")
fi
# A missing extension may be JIT-built on first use; a build killed by a stage timeout can leave a
# lock that stalls every later stage. Without a built progan_fast._C the cuda backend is turned off
# for this run (PROGAN_CHECK_KEEP_CUDA=1 keeps it).
if [[ $HAS_GPU == 1 && ${PROGAN_CHECK_KEEP_CUDA:-0} != 1 ]] && \
   ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('progan_fast._C') is None)" 2>/dev/null; then
  export PROGAN_FAST_DISABLE_CUDA=1
  say "progan_fast._C is not built: PROGAN_FAST_DISABLE_CUDA=1 for the rest of this run"
  STATUS+=("cuda backend: disabled (no built extension)")
fi
TAIL_LINES=4 stage backends 30 "$PY" -c "
import progan_fast
from progan_fast import ops
print('progan_fast', progan_fast.__version__, 'from', progan_fast.__file__)
print('backends:', ops.available_backends())
for b in ('triton', 'cuda'):
    print(f'  {b}:', ops.backend_error(b) or 'ok')
import torch
if torch.cuda.is_available():
    print('impl=auto on this GPU:', ops.describe(torch.device('cuda', 0)))"
# A failed input check inside progan_fast._C must raise, not crash: on the first H100 run (g++ 13.3)
# formatting its message segfaulted (kernels/pf_check.h). Each call in its own process; a crash shows
# as rc=139 and the libstdc++ stream code the module carries is listed for the record.
if [[ $HAS_GPU == 1 ]]; then
  TAIL_LINES=12 stage cxx_errors 30 bash -c '
    for dev in cpu cuda; do
      "$0" -c "import sys, torch, progan_fast._cuda_backend as cb
x = torch.randn(2, 3, 2, 2, device=\"$dev\")
try:
    cb._C.bias_act(x, None, torch.empty_like(x), 7, 0.2, 1.0, 1); sys.exit(\"no error raised\")
except RuntimeError as e:
    print(\"$dev: raised:\", str(e).splitlines()[0][:120])"; rc=$?; echo "$dev: rc=$rc"; [[ $rc == 0 ]] || bad=1
    done
    so=$("$0" -c "import progan_fast._cuda_backend as cb; print(cb._C.__file__)") && command -v nm >/dev/null &&
      echo "libstdc++ stream/locale code defined in $so: $(nm -C --defined-only "$so" | grep -cE "basic_ostream|num_put|codecvt|locale::") symbols"
    exit ${bad:-0}' "$PY"
fi

# ---------------------------------------------------------------------------------- tests
# The GPU-only tests first, the ones no CPU run can stand in for (direct Triton launches, CUDA-graph
# capture, no-sync steps, the conditional and metrics paths), without those that compile with
# torch.compile or autotune (tens of seconds each: they run after the benchmarks). Then the per-op
# kernel tests, which CI also runs in Triton's interpreter and the extension's CPU build.
if [[ $HAS_GPU == 1 ]]; then
  # no -x: every test reports
  first=(tests/test_triton_launch.py tests/test_train_step_graph.py)  # the direct launch, the graphed step
  rest=(); for f in tests/test_*.py; do [[ " ${first[*]} " == *" $f "* ]] || rest+=("$f"); done
  stage gpu_tests "${T_GPU_TESTS:-60}" "$PY" -m pytest "${first[@]}" "${rest[@]}" -q -rfE -m gpu \
    -k "not compile and not autotuned" -p no:cacheprovider
  # the kernels against the reference on the GPU (CI runs the same tests in the interpreter / CPU build),
  # before any benchmark: three runs in a row cut test_triton_ops when it came after the benches
  stage cuda_tests "${T_CUDA_TESTS:-40}" "$PY" -m pytest tests/test_cuda_ext.py -q \
    -p no:cacheprovider -k "not compile"
  stage triton_tests "${T_TRITON_TESTS:-100}" "$PY" -m pytest tests/test_triton_ops.py -q \
    -p no:cacheprovider -k "not compile"
  stage triton_conv_tests "${T_TRITON_CONV_TESTS:-40}" "$PY" -m pytest \
    tests/test_triton_conv.py -q -p no:cacheprovider -k "not compile and not autotuned"
else
  say "SKIP gpu_tests and the GPU kernel tests: no GPU"; STATUS+=("gpu_tests: skipped (no GPU)")
fi

# ---------------------------------------------------------------------------------- bench
export PROGAN_BENCH_QUICK=${PROGAN_BENCH_QUICK:-1}
BENCH_ARGS=(-q -p no:cacheprovider --benchmark-columns=median,iqr,rounds,iterations --benchmark-sort=name)
stage bench_unit "${T_BENCH_UNIT:-20}" "$PY" -m pytest bench/test_report.py bench/test_flops.py bench/test_auto_table.py -q -p no:cacheprovider
# Triton's conv kernels take their heuristic tiles in every bench stage from here on: autotuning each
# implicit-GEMM layer shape compiles ~10 configs (about a minute per resolution on Triton 3.6, whose
# autotuner keeps no results across processes). Tuned tiles can only be faster than these numbers.
export PROGAN_FAST_TRITON_AUTOTUNE=0
# The training step (the README table) first, then the op, layer and host-cost cases, which a short
# budget cuts first (a follow-up with CHECK_STAGES runs them); impl='auto' runs the committed table,
# what a user runs (the report at the end prints the table this run implies: commit it with
# python -m bench.auto_table bench/results/<saved>.json --write)
stage bench_step "${T_BENCH_STEP:-140}" "$PY" -m pytest bench/test_bench_data.py bench/test_bench_train_step.py "${BENCH_ARGS[@]}" -rs \
  -k "${BENCH_STEP_K:-}" --benchmark-json="$OUT/bench_step.json"
stage bench_ops "${T_BENCH_OPS:-85}" "$PY" -m pytest bench/test_bench_ops.py "${BENCH_ARGS[@]}" -k "${BENCH_OPS_K:-}" \
  --benchmark-json="$OUT/bench_ops.json"
# conv layers: ref (cuDNN + eager epilogue), triton (cuDNN + fused Triton epilogue), igemm (implicit GEMM)
stage bench_layers "${T_BENCH_LAYERS:-60}" "$PY" -m pytest bench/test_bench_layers.py "${BENCH_ARGS[@]}" -k "${BENCH_LAYERS_K:-}" \
  --benchmark-json="$OUT/bench_layers.json"
# host cost per op call (tiny tensors: the launch path, not the kernel) - twin vs registered op vs cuda
stage bench_host "${T_BENCH_HOST:-30}" "$PY" -m pytest bench/test_bench_host.py "${BENCH_ARGS[@]}" --benchmark-json="$OUT/bench_host.json"

# ---------------------------------------------------------------------------------- extras
# In order of what a run cut short should keep: the end-to-end --cuda-graph trainer run (the only
# check of the trainer's graphed path through fades), the step profile, then the rest.
if [[ $HAS_GPU == 1 ]]; then
  # a short trainer run with the whole iteration captured in CUDA graphs, through fades
  TAIL_LINES=12 stage train_smoke_graph "${T_TRAIN_SMOKE_GRAPH:-40}" bash -c "rm -rf /tmp/progan_smoke_g && \
    $PY -m progan_fast.train --amp --cuda-graph --stable-kimg 1 --fade-kimg 1 --total-kimg 3.5 --tick-kimg 0.5 \
      --no-progress --run-dir /tmp/progan_smoke_g && cat /tmp/progan_smoke_g/log.jsonl | cut -c1-260"
  # why the step takes what it takes: device-busy vs wall time, GPU kernels, kernel families, top
  # kernels (fast_graph at 64 px too: does capturing beyond --cuda-graph-max-res's default of 32 px pay?)
  TAIL_LINES=16 stage profile_step "${T_PROFILE_STEP:-45}" env PROGAN_BENCH_GRAPH_MAX_RES=64 \
    "$PY" -m bench.profile_step --res 64 4 --variant eager_fp32 eager_amp fast fast_graph --steps 3 --rows 12 \
    --out-md "$OUT/profile_step.md" --out-json "$SCRATCH/profile_step.json"
  # the GPU tests left out above: torch.compile(fullgraph) of the ops and the conv, autotuned conv shapes
  stage gpu_tests_slow "${T_GPU_TESTS_SLOW:-60}" env -u PROGAN_FAST_TRITON_AUTOTUNE \
    "$PY" -m pytest tests -q -rfE -m gpu -k "compile or autotuned" -p no:cacheprovider
  # the eager trainer run (the graphed one above, without --cuda-graph)
  TAIL_LINES=12 stage train_smoke "${T_TRAIN_SMOKE:-40}" bash -c "rm -rf /tmp/progan_smoke && \
    $PY -m progan_fast.train --amp --no-cuda-graph --stable-kimg 1 --fade-kimg 1 --total-kimg 3.5 --tick-kimg 0.5 \
      --no-progress --run-dir /tmp/progan_smoke && cat /tmp/progan_smoke/log.jsonl | cut -c1-260"
fi

# ---------------------------------------------------------------------------------- report
say "report"
inputs=()
for f in "$OUT"/bench_ops.json "$OUT"/bench_host.json "$OUT"/bench_layers.json "$OUT"/bench_step.json; do [[ -s $f ]] && inputs+=("$f"); done
if (( ${#inputs[@]} )); then
  timeout 20 "$PY" -m bench.report convert "${inputs[@]}" --out "$OUT/results.json" --md "$OUT/results.md" \
    --command "bench/gpu_check.sh (PROGAN_BENCH_QUICK=$PROGAN_BENCH_QUICK)" >> "$LOG" 2>&1 \
    || say "report convert failed (see check.log)"
  [[ -s $OUT/results.json ]] && { timeout 15 "$PY" -m bench.report compare "$OUT/results.json" 2>&1 | tee -a "$LOG" || true; }
  # the README's training-step table (resolution x variant, img/s, x eager fp32, MFU), appended to results.md
  [[ -s $OUT/results.json ]] && { printf '\n## Training step (the README table)\n\n' >> "$OUT/results.md"
    timeout 15 "$PY" -m bench.report speed-table "$OUT/results.json" 2>&1 | tee -a "$LOG" >> "$OUT/results.md" || true; }
  # what impl='auto' should run on this GPU architecture, by the rule of bench/auto_table.py
  # (commit it with: python -m bench.auto_table bench/results/<saved>.json --write)
  [[ -s $OUT/results.json ]] && { timeout 15 "$PY" -m bench.auto_table "$OUT/results.json" 2>&1 | tee -a "$LOG" || true; }
else
  say "no benchmark JSON was written"
fi

say "summary (total $(( $(date +%s) - T0 ))s):"
for s in "${STATUS[@]}"; do echo "  $s" | tee -a "$LOG"; done
echo "files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
if [[ -s $OUT/results.md ]]; then
  echo
  cat "$OUT/results.md"
fi
exit 0

#!/usr/bin/env bash
# Every check archbench needs a GPU for, in one command that fits in ten minutes (docs/gpu-nodes.md).
# Run on the GPU node from the repository root, with the wheels of benchmarks/gpu/fetch_wheels.sh in .whl/:
#     OUT=/tmp/out bash benchmarks/gpu/checks.sh
# Results land in $OUT (at most 8 files): summary.txt (environment, each stage's exit
# code and wall time), pytest.txt (the fused-vs-reference tests, then the timing-sensitive ones),
# stages.log (every other stage's output), rows.jsonl (the rows of every suite and recipe run:
# long-context, decode eager and graphed, mqar, recipes; `run_id` says which), the long-context
# run.json (environment, measured peaks) and compile-cache.tar.xz (Triton's and inductor's
# compiled kernels: `python3 benchmarks/gpu/compile_cache.py keep DIR` puts it in .gpucache/, and
# the next run, with .gpucache/ beside it, skips those compiles).
# A stage that fails or times out does not stop the next; the timed stages run alone on the GPU.
# CHECKS_SCALE=0.5 halves every stage's time limit (a short rerun).
# CHECKS_BUDGET_S (default 570) is the whole script's time: no stage runs past it less the minute
# kept for packing the compile cache and the results, so a run stopped at 600 s still writes
# them (a stage that would start with under 10 s left is skipped and says so).
set -u
OUT=${OUT:-/tmp/archbench-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDA_DEVICE_ORDER=PCI_BUS_ID ARCHBENCH_LOG_EVERY_S=10 ARCHBENCH_INSTAFAIL=1
SCALE=${CHECKS_SCALE:-1}
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
# compiled kernels from an earlier call (carried in .gpucache/), at the fixed path Triton's cache records
CACHE_TOOL="python3 benchmarks/gpu/compile_cache.py"
CACHE_MSG=$($CACHE_TOOL unpack .gpucache/compile-cache.tar.xz 2>&1)
export $($CACHE_TOOL env)
AB="python3 -m archbench.cli"
RUNS=$(mktemp -d)  # run directories; only their rows come back
S="$OUT/summary.txt"
LOGS=$(mktemp -d)
{ date -u; echo "$CACHE_MSG"; nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit --format=csv,noheader; python3 -c \
  "import torch, importlib.util as u; print('torch', torch.__version__, 'cuda', torch.version.cuda, {m: bool(u.find_spec(m)) for m in ('triton', 'fla', 'mamba_ssm', 'flash_attn', 'transformers', 'xdist', 'pynvml')})"; } > "$S" 2>&1

BUDGET=${CHECKS_BUDGET_S:-570}
RESERVE=60  # kept for the end: packing the compile cache and the results
stage() {  # stage NAME SECONDS CMD...: run CMD with a (scaled) time limit, cut to what the budget has left
  local name=$1 limit left t0=$SECONDS
  limit=$(python3 -c "print(max(10, int($2 * $SCALE)))")
  left=$((BUDGET - RESERVE - SECONDS))
  shift 2
  if [ "$left" -lt 10 ]; then
    echo "$name: skipped (${left} s of the budget left)" >> "$S"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s (limit $limit s)" >> "$S"
}
rows() {  # rows DIR: add a run's rows to $OUT/rows.jsonl (each row names its run_id)
  if [ -f "$1/rows.jsonl" ]; then cat "$1/rows.jsonl" >> "$OUT/rows.jsonl"; fi
}
XDIST=""
python3 -c "import xdist" 2> /dev/null && XDIST="-n ${CHECKS_XDIST_N:-12}"  # 16 cores: 12 workers, the rest for the training stages

# Stages run in this order, most needed first; CHECKS_SKIP="timing op_speed" skips stages by name.
skip() { case " ${CHECKS_SKIP:-} " in *" $1 "*) echo "$1: skipped (CHECKS_SKIP)" >> "$S"; return 0;; esac; return 1; }

# 0. first, since every timed row rests on it: the timer against triton.testing.do_bench, CUDA-graph
#    replay (decode included), the real NVML energy counter, NVML process memory (alone; about 30 s)
skip timing || stage timing 45 python3 -m pytest -q -rsP --tb=short -p no:cacheprovider tests/test_timer_fidelity.py \
  tests/test_bench.py tests/test_energy.py tests/test_measure.py
# 1. every fused backend against its reference (ops and mixers): the CUDA-only tests alone, spread over
#    workers so that Triton's compiles (fla autotunes every kernel) run side by side. Each test's result is
#    a line (-v) and each failure's traceback is printed when it happens (ARCHBENCH_INSTAFAIL), so a stage
#    cut at its limit still says what passed and why the rest failed. On a fresh machine these compiles are
#    slow: 170 s finished only 13 of the ~45 tests on the H200 (2026-11-26); give the stage most of a call.
PYTEST_S=${CHECKS_PYTEST_S:-250}
# 1b. beside the pytest stage (its compiles are CPU work and leave the GPU idle; these are Python-bound
#    training loops whose speed is not what they check): a recipe on the GPU (the default teacher
#    pre-trained there, RADLADS steps 1 + 2, teacher vs student rows) and MQAR in bf16 at Zoology's
#    vocabulary, L=64, kv=4, d=64, one process per arch (CHECKS_MQAR_ARCHS), each run capped in wall time
#    (train.max_train_s) so that it ends with an evaluated row before the stage's limit
TRAIN_S=${CHECKS_TRAIN_S:-$PYTEST_S}
skip recipes || stage recipes "$TRAIN_S" $AB convert radlads --set device=cuda --out "$RUNS/rc" &
for a in ${CHECKS_MQAR_ARCHS:-softmax_attention mamba2}; do
  skip mqar || stage "mqar-$a" "$TRAIN_S" $AB run suites/mqar-gpu.yaml --out "$RUNS/mq-$a" --no-report --allow-failures \
    --set "sweep.arch=[$a]" --set 'sweep.mode=[task]' --set 'sweep.d_model=[64]' --set 'sweep.seq_len=[64]' \
    --set 'sweep.num_kv_pairs=[4]' --set 'defaults.train.lr=[2.2e-3]' --set defaults.train.steps=6000 \
    --set defaults.train.eval_every=250 --set "defaults.train.max_train_s=$((TRAIN_S * 7 / 10))" &
done
#    ARCHBENCH_TRITON_SINGLE_CONFIG=1: no autotuning, each kernel keeps its first config that runs
#    (tests/triton_single_config.py), so each kernel compiles once instead of once per config;
#    CHECKS_SINGLE_CONFIG= (empty) autotunes as usual.
skip pytest || ARCHBENCH_TRITON_SINGLE_CONFIG=${CHECKS_SINGLE_CONFIG-1} stage pytest "$PYTEST_S" python3 -m pytest -v -rs --tb=short \
  -p no:cacheprovider $XDIST --timeout 300 ${CHECKS_PYTEST_K:+-k "$CHECKS_PYTEST_K"} \
  -m fused tests/test_zoo.py tests/test_ops.py tests/test_gla.py \
  tests/test_delta_rule.py tests/test_dplr.py tests/test_ssm.py tests/test_sparse.py
wait  # the training stages beside it
rows "$RUNS/rc"
for d in "$RUNS"/mq-*; do rows "$d"; done
# 2. a slice of the long-context suite, alone on the GPU: every family (CHECKS_LC_ARCHS overrides the list),
#    three modes, fused backends, NVML energy on, at T=16K
LC_ARCHS=${CHECKS_LC_ARCHS:-}
skip long-context || stage long-context ${CHECKS_LC_S:-130} $AB run suites/long-context.yaml --out "$RUNS/lc" --no-report --allow-failures \
  ${LC_ARCHS:+--set "sweep.arch=[$LC_ARCHS]"} --set 'sweep.batch=[1]' --set 'sweep.seq_len=[16384]' \
  --set defaults.measure.budget_s=0.3 --set defaults.measure.warmup=2 --set defaults.measure.min_repeats=5 \
  --set defaults.measure.decode_tokens=16 --set defaults.measure.energy_window_s=0.5
rows "$RUNS/lc"
[ -f "$RUNS/lc/run.json" ] && cp "$RUNS/lc/run.json" "$OUT/run.json"
# 2b. decode eager vs CUDA-graph replay (launch overhead is most of B=1 decode on a GPU), alone on the GPU
for g in false true; do
  skip decode-graphs || stage "decode-graph-$g" 35 $AB run suites/decode.yaml --device cuda --out "$RUNS/dg-$g" \
    --no-report --allow-failures --set defaults.dtype=bfloat16 --set 'sweep.seq_len=[4096]' \
    --set "defaults.measure.cuda_graph=$g" --set defaults.measure.energy=false \
    ${CHECKS_DG_BACKEND:+--set "sweep.backend=[$CHECKS_DG_BACKEND]"}
done
rows "$RUNS/dg-false"
rows "$RUNS/dg-true"
# 5. op level on the GPU: the references in fp32 (the CPU table is results/baselines/cpu-2core-xeon/op_speed.txt),
#    then the fused kernel each op picks, in bf16, with the kernel named
skip op_speed || stage op_speed 30 python3 benchmarks/op_speed.py --device cuda --lengths 4096 16384
skip op_speed_fused || stage op_speed_fused 35 python3 benchmarks/op_speed.py --device cuda --lengths 4096 16384 \
  --backend auto --dtype bfloat16

mv "$LOGS/pytest.log" "$OUT/pytest.txt" 2> /dev/null
[ -f "$LOGS/timing.log" ] && { echo "=== timing"; cat "$LOGS/timing.log"; } >> "$OUT/pytest.txt"  # 8 files at most
for f in "$LOGS"/recipes.log "$LOGS"/mqar-*.log "$LOGS"/op_speed.log "$LOGS"/op_speed_fused.log "$LOGS"/long-context.log \
  "$LOGS"/decode-graph-false.log "$LOGS"/decode-graph-true.log; do
  [ -f "$f" ] && { echo "=== $(basename "$f" .log)"; tail -c 60000 "$f"; } >> "$OUT/stages.log"
done
# last: the compiled kernels, for the next call to carry (oldest first within 15 MiB; about 10-30 s)
timeout 50 $CACHE_TOOL pack "$OUT/compile-cache.tar.xz" >> "$S" 2>&1 || echo "compile cache: pack failed or timed out" >> "$S"
cat "$S"
